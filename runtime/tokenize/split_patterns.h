// The pre-tokenizer split patterns of HuggingFace tokenizer.json files (Split, behavior
// Isolated), shared by the BPE tokenizer and the GGUF importer (which rebuilds the
// tokenizer.json pipeline that tokenizer.ggml.pre names). Header only: no link dependency.
#pragma once

#include <string_view>

namespace pqvk::tokenize {

// The pre-tokenizer split patterns of tokenizer.json (Split, behavior Isolated).
inline constexpr std::string_view kLlama3SplitPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
inline constexpr std::string_view kQwen2SplitPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// ByteLevel's own split (use_regex: true), GPT-2's.
inline constexpr std::string_view kGpt2SplitPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

}  // namespace pqvk::tokenize
