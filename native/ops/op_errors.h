// Errors raised while checking a node's inputs and attributes. They become ORT_INVALID_ARGUMENT
// statuses whose message names the op, the node, the input and expected vs actual (docs/ops.md).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace hysparse {
namespace ops {

class OpError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

std::string ShapeString(const std::vector<int64_t>& shape);

// Prefixes every message with "OpName(node 'name'): ".
class OpContext {
 public:
  OpContext(std::string op_name, std::string node_name)
      : op_name_(std::move(op_name)), node_name_(std::move(node_name)) {}

  [[noreturn]] void Fail(const std::string& what) const;
  const std::string& op_name() const { return op_name_; }

 private:
  std::string op_name_;
  std::string node_name_;
};

}  // namespace ops
}  // namespace hysparse
