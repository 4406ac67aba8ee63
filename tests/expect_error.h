// Expecting a clear error: runs f and expects an exception of type E whose message contains
// every one of `parts` (the file, the key or tensor, what is wrong).
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "model/error.h"

namespace pqvk::test {

template <typename E, typename F>
void expect_error_of(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning '" << parts.front() << "'";
  } catch (const E& e) {
    for (const std::string& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << "'" << p << "' not in: " << e.what();
  }
}

// A ModelError (runtime/model's errors).
template <typename F>
void expect_error(F&& f, const std::vector<std::string>& parts) {
  expect_error_of<ModelError>(f, parts);
}

}  // namespace pqvk::test
