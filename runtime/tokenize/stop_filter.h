// Stop strings in streamed text: what a generator may print now, and when a stop string has
// completed (pq-chat, pq-server).
#pragma once

#include <string>
#include <vector>

namespace pqvk::tokenize {

// Holds back streamed text that may be the start of a stop string.
class StopFilter {
 public:
  explicit StopFilter(std::vector<std::string> stops);  // empty strings are ignored
  // Adds text; returns what is certainly not part of a stop string. *stopped: one completed
  // (the earliest; the text from it on is dropped).
  std::string push(const std::string& text, bool* stopped);
  std::string flush();  // the held-back text, at the end of a reply

 private:
  std::vector<std::string> stops_;
  std::string pending_;
};

}  // namespace pqvk::tokenize
