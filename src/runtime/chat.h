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
std::vector<int32_t> render_chat(const Tokenizer& tok, const ChatFormat& f, const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt = true, bool enable_thinking = true);

// One user turn as text (ChatML), for the command line's --chat.
std::string chatml_user_turn(const std::string& user, bool enable_thinking);

}  // namespace tq
