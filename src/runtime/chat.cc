#include "runtime/chat.h"

#include <cctype>

namespace tq {

ChatFormat ChatFormat::of(const Tokenizer& tok, int32_t model_bos) {
  ChatFormat f;
  f.chatml = tok.id_of("<|im_start|>") >= 0 && tok.id_of("<|im_end|>") >= 0;
  f.bos = f.chatml ? -1 : model_bos;
  return f;
}

namespace {
constexpr const char* kThinkOpen = "<think>\n";
constexpr const char* kThinkEmpty = "<think>\n\n</think>\n\n";
}  // namespace

std::vector<int32_t> render_chat(const Tokenizer& tok, const ChatFormat& f, const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt, bool enable_thinking, std::vector<size_t>* message_ends) {
  std::vector<int32_t> ids;
  if (f.bos >= 0) ids.push_back(f.bos);
  auto add = [&](const std::string& text, bool add_prefix) {
    const auto t = tok.encode(text, add_prefix);
    ids.insert(ids.end(), t.begin(), t.end());
  };
  bool first = true;
  for (const auto& m : messages) {
    if (f.chatml) {
      const std::string role = m.role == "developer" ? "system" : m.role;
      std::string body = m.content;
      if (role == "assistant" && body.rfind("<think>", 0) != 0) body = (enable_thinking ? kThinkOpen : kThinkEmpty) + body;
      add("<|im_start|>" + role + "\n" + body + "<|im_end|>\n", true);
    } else if (!m.content.empty()) {
      // Plain text: the first message starts the text; an assistant message continues it
      // exactly as generated; other messages continue it after a space.
      const bool space = !first && m.role != "assistant" && !std::isspace(static_cast<unsigned char>(m.content[0]));
      add(space ? " " + m.content : m.content, first);
      first = false;
    }
    if (message_ends) message_ends->push_back(ids.size());
  }
  if (add_generation_prompt && f.chatml)
    add(std::string("<|im_start|>assistant\n") + (enable_thinking ? kThinkOpen : kThinkEmpty), true);
  return ids;
}

}  // namespace tq
