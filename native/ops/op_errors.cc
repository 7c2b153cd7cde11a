#include "ops/op_errors.h"

#include <sstream>

namespace hysparse {
namespace ops {

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << '[';
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << ']';
  return s.str();
}

void OpContext::Fail(const std::string& what) const {
  throw OpError(op_name_ + "(node '" + node_name_ + "'): " + what);
}

}  // namespace ops
}  // namespace hysparse
