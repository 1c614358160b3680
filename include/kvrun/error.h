// kvrun — the one exception type the library throws for bad input.
#pragma once
#include <stdexcept>
#include <string>

namespace kvrun {

// Every failure caused by input (files, shapes, configs, models) is reported as
// an Error whose message names the file/tensor, what was expected and what was found.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace kvrun
