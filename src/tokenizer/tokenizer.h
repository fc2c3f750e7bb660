// tokenizer.json (Hugging Face tokenizers format), two model kinds:
//  - byte-level BPE (GPT-2 / Qwen2/3/3.5): NFC normalization (utf8proc), the
//    pre-tokenizer Split regex read from the file (PCRE2), the byte-to-unicode map,
//    merges by rank;
//  - SentencePiece-style BPE (Llama, and what `tq import-llama2c` writes): "▁" for
//    spaces, merges by rank, unknown characters as <0xXX> byte tokens.
// Added tokens (<|im_start|>, <s>, ...) are matched verbatim before anything else.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace tq {

class Tokenizer {
 public:
  static Tokenizer load(const std::string& path);
  static Tokenizer parse(const std::string& json_text, const std::string& path);
  Tokenizer();
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // add_prefix: SentencePiece models prepend "▁" (the dummy prefix) to the text; off when
  // the text continues earlier text (its own leading space, if any, is kept as "▁").
  std::vector<int32_t> encode(std::string_view text, bool add_prefix = true) const;
  std::string decode(const std::vector<int32_t>& ids) const;
  // The bytes token `id` contributes to decoded text (no leading-space stripping).
  const std::string& token_bytes(int32_t id) const;
  int32_t id_of(const std::string& token) const;  // -1 if absent
  size_t vocab_size() const;
  bool is_special(int32_t id) const;
  // True when decode() drops one leading space of the text (SentencePiece "▁" prefix).
  bool strips_leading_space() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Turns a stream of ids into text pieces that are always complete UTF-8.
class StreamDecoder {
 public:
  // at_text_start: the ids begin the text, so a SentencePiece leading space (the dummy
  // prefix) is dropped; false when they continue a prompt (the space belongs to the text).
  explicit StreamDecoder(const Tokenizer& t, bool at_text_start = true) : tok_(t), started_(!at_text_start) {}
  std::string feed(int32_t id);
  std::string flush();

 private:
  const Tokenizer& tok_;
  std::string pending_;
  bool started_ = false;
};

}  // namespace tq
