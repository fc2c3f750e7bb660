// Chat messages to prompt tokens. Models whose tokenizer has ChatML tokens (Qwen) get
// ChatML as Qwen's templates render text turns; other models (e.g. the built-in story
// model) get the messages' text in order after the BOS token: the first starts the text,
// assistant messages continue it verbatim (generated text keeps its leading space), and
// other messages continue it after a space.
// Each message is tokenized separately, so a conversation's tokens are a prefix of the
// tokens of any conversation that extends it: what server-side prefix reuse relies on.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace tq {

struct ChatMessage {
  std::string role;  // system, user, assistant (developer → system, tool → tool)
  std::string content;
};

struct ChatFormat {
  bool chatml = false;  // the tokenizer has <|im_start|> / <|im_end|>
  int32_t bos = -1;     // prepended when >= 0 and not ChatML
  static ChatFormat of(const Tokenizer& tok, int32_t model_bos);
};

// Tokens of `messages`; add_generation_prompt opens the assistant turn (ChatML:
// "<|im_start|>assistant\n" then "<think>\n" or, thinking off, an empty think block).
// An assistant message in the history is rendered as its turn was generated, so that a
// reply sent back verbatim gives the tokens that were run: after "<think>\n" (thinking
// on) or after the empty think block (thinking off), unless it starts with "<think>".
// (Qwen's own template drops earlier turns' reasoning, which makes every turn re-run.)
// message_ends (optional): the token position after each message.
std::vector<int32_t> render_chat(const Tokenizer& tok, const ChatFormat& f, const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt = true, bool enable_thinking = true,
                                 std::vector<size_t>* message_ends = nullptr);

}  // namespace tq
