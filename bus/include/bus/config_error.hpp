// The one error busd's config readers throw, the broker's ([broker], [limits], [access]) and
// the cluster's ([[app]]): what() names the file and the key, "FILE: key 'limits.max_message_size':
// must be between ...", or the file and line of a syntax error. One type, so a program that reads
// both parts catches one.
#pragma once

#include <stdexcept>

namespace bus {

struct ConfigError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

} // namespace bus
