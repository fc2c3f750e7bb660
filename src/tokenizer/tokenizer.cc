#include "tokenizer/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <shared_mutex>
#include <sstream>

#include "core/error.h"

namespace tq {

namespace {
using json = nlohmann::json;

// GPT-2's pre-tokenizer pattern (ByteLevel with use_regex = true).
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

std::string utf8_of(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xF0 | (cp >> 18));
    s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// Length of the UTF-8 sequence starting with byte c (1 for invalid lead bytes).
size_t utf8_len(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c >> 5) == 6) return 2;
  if ((c >> 4) == 14) return 3;
  if ((c >> 3) == 30) return 4;
  return 1;
}

// Splits UTF-8 text into characters (invalid bytes become single-byte pieces).
std::vector<std::string> utf8_chars(std::string_view s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    size_t n = std::min(utf8_len(static_cast<unsigned char>(s[i])), s.size() - i);
    out.emplace_back(s.substr(i, n));
    i += n;
  }
  return out;
}

struct Regex {
  pcre2_code* code = nullptr;
  ~Regex() {
    if (code) pcre2_code_free(code);
  }
};

}  // namespace

struct Tokenizer::Impl {
  enum class Kind { byte_level, sentencepiece } kind = Kind::byte_level;
  std::unordered_map<std::string, int32_t> vocab;
  std::vector<std::string> id_to_token;
  std::vector<std::string> id_to_bytes;
  std::vector<bool> special;
  std::unordered_map<std::string, int> merge_rank;  // "a b" → rank
  std::vector<std::pair<std::string, int32_t>> added;  // sorted longest first
  bool nfc = false;
  std::string prepend;                                     // SentencePiece: text prepended by the normalizer
  std::vector<std::pair<std::string, std::string>> replaces;  // normalizer Replace steps
  bool byte_fallback = false;
  bool strip_leading_space = false;
  int32_t unk = -1;
  std::unique_ptr<Regex> split;  // pre-tokenizer regex (byte-level)
  std::string byte_to_char[256];
  std::unordered_map<std::string, unsigned char> char_to_byte;
  // Piece → ids memo; encode() is const and may run on several threads at once.
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;
  mutable std::shared_mutex cache_mutex;

  void bpe(const std::vector<std::string>& symbols_in, std::vector<int32_t>& out) const;
  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const;
  void encode_plain(std::string_view text, std::vector<int32_t>& out, bool first) const;
};

// BPE over a sequence of symbols: repeatedly merge the adjacent pair of lowest rank
// (leftmost on ties), as Hugging Face tokenizers' BPE does.
void Tokenizer::Impl::bpe(const std::vector<std::string>& syms_in, std::vector<int32_t>& out) const {
  std::vector<std::string> sym = syms_in;
  const size_t n = sym.size();
  std::vector<int> prev(n), next(n);
  std::vector<bool> alive(n, true);
  for (size_t i = 0; i < n; ++i) {
    prev[i] = static_cast<int>(i) - 1;
    next[i] = i + 1 < n ? static_cast<int>(i + 1) : -1;
  }
  using Item = std::tuple<int, int, std::string, std::string>;  // rank, left index, left, right
  auto cmp = [](const Item& a, const Item& b) {
    return std::get<0>(a) != std::get<0>(b) ? std::get<0>(a) > std::get<0>(b) : std::get<1>(a) > std::get<1>(b);
  };
  std::priority_queue<Item, std::vector<Item>, decltype(cmp)> pq(cmp);
  auto push = [&](int i) {
    if (i < 0 || next[i] < 0) return;
    auto it = merge_rank.find(sym[i] + " " + sym[next[i]]);
    if (it != merge_rank.end()) pq.emplace(it->second, i, sym[i], sym[next[i]]);
  };
  for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int>(i));
  while (!pq.empty()) {
    auto [rank, i, l, r] = pq.top();
    pq.pop();
    if (!alive[i] || next[i] < 0 || sym[i] != l || sym[next[i]] != r) continue;  // stale
    const int j = next[i];
    sym[i] += sym[j];
    alive[j] = false;
    next[i] = next[j];
    if (next[j] >= 0) prev[next[j]] = i;
    push(prev[i]);
    push(i);
  }
  for (int i = 0; i >= 0 && static_cast<size_t>(i) < n; i = next[i]) {
    auto it = vocab.find(sym[i]);
    if (it != vocab.end()) {
      out.push_back(it->second);
    } else if (byte_fallback) {
      for (unsigned char c : sym[i]) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "<0x%02X>", c);
        auto b = vocab.find(buf);
        if (b != vocab.end()) out.push_back(b->second);
        else if (unk >= 0) out.push_back(unk);
      }
    } else if (unk >= 0) {
      out.push_back(unk);
    }
    if (next[i] < 0) break;
  }
}

void Tokenizer::Impl::encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
  std::string key(piece);
  {
    std::shared_lock lock(cache_mutex);
    auto c = cache.find(key);
    if (c != cache.end()) {
      out.insert(out.end(), c->second.begin(), c->second.end());
      return;
    }
  }
  std::vector<std::string> syms;
  if (kind == Kind::byte_level) {
    for (unsigned char b : piece) syms.push_back(byte_to_char[b]);
  } else {
    syms = utf8_chars(piece);
  }
  std::vector<int32_t> ids;
  bpe(syms, ids);
  {
    std::unique_lock lock(cache_mutex);
    if (cache.size() < 200000) cache.emplace(std::move(key), ids);
  }
  out.insert(out.end(), ids.begin(), ids.end());
}

// Text between added tokens: normalize, pre-tokenize, BPE.
void Tokenizer::Impl::encode_plain(std::string_view text, std::vector<int32_t>& out, bool first) const {
  if (text.empty()) return;
  std::string s(text);
  if (nfc) {
    utf8proc_uint8_t* r = utf8proc_NFC(reinterpret_cast<const utf8proc_uint8_t*>(s.c_str()));
    if (r) {
      s = reinterpret_cast<char*>(r);
      std::free(r);
    }
  }
  if (kind == Kind::sentencepiece) {
    if (first || prepend.empty()) s = prepend + s;
    for (const auto& [from, to] : replaces) {
      std::string o;
      for (size_t i = 0; i < s.size();) {
        if (!from.empty() && s.compare(i, from.size(), from) == 0) {
          o += to;
          i += from.size();
        } else {
          o += s[i++];
        }
      }
      s = o;
    }
    encode_piece(s, out);
    return;
  }
  // Byte-level: Split(regex, isolated) — matches and the gaps between them are pieces.
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(split->code, nullptr);
  const auto* subj = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t pos = 0, last = 0;
  while (pos <= s.size()) {
    int rc = pcre2_match(split->code, subj, s.size(), pos, 0, md, nullptr);
    if (rc < 0) break;
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    size_t b = ov[0], e = ov[1];
    if (b > last) encode_piece(std::string_view(s).substr(last, b - last), out);
    if (e > b) encode_piece(std::string_view(s).substr(b, e - b), out);
    last = e;
    pos = e > b ? e : e + std::max<size_t>(1, utf8_len(static_cast<unsigned char>(s[e < s.size() ? e : 0])));
  }
  if (last < s.size()) encode_piece(std::string_view(s).substr(last), out);
  pcre2_match_data_free(md);
}

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  check(f.good(), "{}: cannot open tokenizer file", path);
  std::stringstream ss;
  ss << f.rdbuf();
  return parse(ss.str(), path);
}

namespace {
// Collects the steps of a (possibly nested) Sequence component.
void flatten(const json& j, const char* list_key, std::vector<const json*>& out) {
  if (!j.is_object()) return;
  if (j.value("type", "") == "Sequence" && j.contains(list_key)) {
    for (const auto& s : j[list_key]) flatten(s, list_key, out);
  } else {
    out.push_back(&j);
  }
}
}  // namespace

Tokenizer Tokenizer::parse(const std::string& text, const std::string& path) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON: {}", path, e.what());
  }
  Tokenizer t;
  Impl& im = *t.impl_;
  try {
    check(j.is_object() && j.contains("model") && j["model"].is_object(), "{}: field 'model' missing", path);
    const json& m = j["model"];
    check(m.value("type", "BPE") == "BPE", "{}: field 'model.type' is '{}', only BPE is supported", path,
          m.value("type", ""));
    check(m.contains("vocab") && m["vocab"].is_object(), "{}: field 'model.vocab' missing or not an object", path);
    check(m.contains("merges") && m["merges"].is_array(), "{}: field 'model.merges' missing or not an array", path);
    int32_t max_id = -1;
    for (auto it = m["vocab"].begin(); it != m["vocab"].end(); ++it) {
      check(it.value().is_number_integer() && it.value().get<int64_t>() >= 0,
            "{}: model.vocab['{}'] must be a non-negative integer id", path, it.key());
      im.vocab[it.key()] = it.value().get<int32_t>();
      max_id = std::max(max_id, it.value().get<int32_t>());
    }
    int rank = 0;
    for (const auto& mg : m["merges"]) {
      std::string key;
      if (mg.is_string()) {
        key = mg.get<std::string>();
      } else {
        check(mg.is_array() && mg.size() == 2, "{}: model.merges[{}] must be \"a b\" or [a, b]", path, rank);
        key = mg[0].get<std::string>() + " " + mg[1].get<std::string>();
      }
      im.merge_rank.emplace(key, rank++);
    }
    im.byte_fallback = m.value("byte_fallback", false);
    if (m.contains("unk_token") && m["unk_token"].is_string()) {
      auto u = im.vocab.find(m["unk_token"].get<std::string>());
      if (u != im.vocab.end()) im.unk = u->second;
    }
    if (j.contains("added_tokens") && j["added_tokens"].is_array())
      for (const auto& a : j["added_tokens"]) {
        const std::string c = a.at("content").get<std::string>();
        const int32_t id = a.at("id").get<int32_t>();
        im.added.emplace_back(c, id);
        im.vocab[c] = id;
        max_id = std::max(max_id, id);
      }
    std::sort(im.added.begin(), im.added.end(),
              [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
    // Components.
    std::vector<const json*> norms, pres, decs;
    if (j.contains("normalizer")) flatten(j["normalizer"], "normalizers", norms);
    if (j.contains("pre_tokenizer")) flatten(j["pre_tokenizer"], "pretokenizers", pres);
    if (j.contains("decoder")) flatten(j["decoder"], "decoders", decs);
    bool byte_level = false, metaspace = false;
    std::string pattern;
    for (const json* p : pres) {
      const std::string ty = p->value("type", "");
      if (ty == "ByteLevel") {
        byte_level = true;
        if (p->value("use_regex", true) && pattern.empty()) pattern = kGpt2Pattern;
      } else if (ty == "Split") {
        check(p->contains("pattern"), "{}: Split pre-tokenizer has no pattern", path);
        const json& pat = (*p)["pattern"];
        if (pat.contains("Regex")) pattern = pat["Regex"].get<std::string>();
        else if (pat.contains("String")) pattern = pat["String"].get<std::string>();  // literal, rare
        check(p->value("behavior", "Isolated") == "Isolated",
              "{}: Split pre-tokenizer behavior '{}' not supported (expected Isolated)", path, p->value("behavior", ""));
      } else if (ty == "Metaspace") {
        metaspace = true;
      } else {
        fail("{}: pre_tokenizer type '{}' not supported", path, ty);
      }
    }
    for (const json* d : decs)
      if (d->value("type", "") == "ByteLevel") byte_level = true;
    for (const json* n : norms) {
      const std::string ty = n->value("type", "");
      if (ty == "NFC") im.nfc = true;
      else if (ty == "Prepend") im.prepend = n->value("prepend", "");
      else if (ty == "Replace") {
        const json& pat = (*n)["pattern"];
        check(pat.contains("String"), "{}: Replace normalizer needs a String pattern", path);
        im.replaces.emplace_back(pat["String"].get<std::string>(), n->value("content", ""));
      } else {
        fail("{}: normalizer type '{}' not supported (supported: NFC, Prepend, Replace)", path, ty);
      }
    }
    if (metaspace) {  // Metaspace pre-tokenizer ≈ prepend "▁" and replace spaces
      im.prepend = "\xE2\x96\x81";
      im.replaces.emplace_back(" ", "\xE2\x96\x81");
    }
    im.kind = byte_level ? Impl::Kind::byte_level : Impl::Kind::sentencepiece;
    for (const json* d : decs) {
      const std::string ty = d->value("type", "");
      if (ty == "Strip" && d->value("start", 0) > 0) im.strip_leading_space = true;
      if (ty == "Metaspace" && d->value("prepend_scheme", "always") != "never") im.strip_leading_space = true;
    }
    // Byte-to-unicode map (GPT-2).
    int nxt = 0;
    for (int b = 0; b < 256; ++b) {
      const bool keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      im.byte_to_char[b] = utf8_of(keep ? b : 256 + nxt++);
      im.char_to_byte[im.byte_to_char[b]] = static_cast<unsigned char>(b);
    }
    if (im.kind == Impl::Kind::byte_level) {
      if (pattern.empty()) pattern = kGpt2Pattern;
      int err = 0;
      PCRE2_SIZE off = 0;
      im.split = std::make_unique<Regex>();
      im.split->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.c_str()), PCRE2_ZERO_TERMINATED,
                                     PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
      if (!im.split->code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        fail("{}: pre-tokenizer regex does not compile at offset {}: {}", path, off, reinterpret_cast<char*>(msg));
      }
      pcre2_jit_compile(im.split->code, PCRE2_JIT_COMPLETE);
    }
    // id → token, id → decoded bytes.
    im.id_to_token.assign(max_id + 1, "");
    im.id_to_bytes.assign(max_id + 1, "");
    im.special.assign(max_id + 1, false);
    for (const auto& [tok, id] : im.vocab) im.id_to_token[id] = tok;
    for (int32_t id = 0; id <= max_id; ++id) {
      const std::string& tok = im.id_to_token[id];
      std::string bytes;
      if (im.kind == Impl::Kind::byte_level) {
        bool ok = true;
        for (const auto& ch : utf8_chars(tok)) {
          auto it = im.char_to_byte.find(ch);
          if (it == im.char_to_byte.end()) {
            ok = false;
            break;
          }
          bytes += static_cast<char>(it->second);
        }
        if (!ok) bytes = tok;
      } else {
        unsigned v = 0;
        if (im.byte_fallback && tok.size() == 6 && tok.rfind("<0x", 0) == 0 && tok[5] == '>' &&
            std::sscanf(tok.c_str() + 3, "%2X", &v) == 1) {
          bytes = std::string(1, static_cast<char>(v));
        } else {
          for (size_t i = 0; i < tok.size();) {
            if (tok.compare(i, 3, "\xE2\x96\x81") == 0) {
              bytes += ' ';
              i += 3;
            } else {
              bytes += tok[i++];
            }
          }
        }
      }
      im.id_to_bytes[id] = bytes;
    }
    for (const auto& [c, id] : im.added) {
      im.id_to_bytes[id] = c;
      im.special[id] = true;
    }
  } catch (const json::exception& e) {
    fail("{}: a field has the wrong type: {}", path, e.what());
  }
  return t;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_prefix) const {
  const Impl& im = *impl_;
  std::vector<int32_t> out;
  size_t start = 0;
  bool first = add_prefix;
  for (size_t i = 0; i < text.size();) {
    bool matched = false;
    for (const auto& [c, id] : im.added) {
      if (!c.empty() && text.compare(i, c.size(), c) == 0) {
        im.encode_plain(text.substr(start, i - start), out, first);
        first = false;
        out.push_back(id);
        i += c.size();
        start = i;
        matched = true;
        break;
      }
    }
    if (!matched) ++i;
  }
  im.encode_plain(text.substr(start), out, first);
  return out;
}

const std::string& Tokenizer::token_bytes(int32_t id) const {
  static const std::string empty;
  if (id < 0 || static_cast<size_t>(id) >= impl_->id_to_bytes.size()) return empty;
  return impl_->id_to_bytes[id];
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string s;
  for (int32_t id : ids) s += token_bytes(id);
  if (impl_->strip_leading_space && !s.empty() && s[0] == ' ') s.erase(0, 1);
  return s;
}

int32_t Tokenizer::id_of(const std::string& token) const {
  auto it = impl_->vocab.find(token);
  return it == impl_->vocab.end() ? -1 : it->second;
}
size_t Tokenizer::vocab_size() const { return impl_->id_to_bytes.size(); }
bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->special.size() && impl_->special[id];
}
bool Tokenizer::strips_leading_space() const { return impl_->strip_leading_space; }

std::string StreamDecoder::feed(int32_t id) {
  pending_ += tok_.token_bytes(id);
  if (!started_ && !pending_.empty()) {
    if (tok_.strips_leading_space() && pending_[0] == ' ') pending_.erase(0, 1);
    started_ = !pending_.empty();
  }
  // Emit the longest prefix that ends on a complete UTF-8 character.
  size_t cut = pending_.size();
  for (size_t back = 1; back <= std::min<size_t>(4, pending_.size()); ++back) {
    const unsigned char c = static_cast<unsigned char>(pending_[pending_.size() - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte
    if (utf8_len(c) > back) cut = pending_.size() - back;
    break;
  }
  std::string out = pending_.substr(0, cut);
  pending_.erase(0, cut);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace tq
