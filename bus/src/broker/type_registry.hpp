// busd's type registry: what clients told it about the protobuf types they send (a
// FileDescriptorSet per type name), so that tools that were never built with a type (`bus sub`,
// the bridges) can decode it. Bounded in count and size (Limits); only consistent sets that
// define the type they name are kept. The newest registration of a name wins: types evolve.
#pragma once

#include "bus/error.hpp"
#include "bus/v1/broker.pb.h"

#include <cstddef>
#include <string>
#include <string_view>
#include <unordered_map>

namespace bus::broker {

class TypeRegistry {
public:
    TypeRegistry(std::size_t max_types, std::size_t max_descriptor_size)
        : max_types_(max_types), max_descriptor_size_(max_descriptor_size) {}

    // Registers `descriptor_set` (a serialized FileDescriptorSet) as the description of `name`.
    // On refusal, the error to send and `detail` says why.
    std::error_code add(const std::string& name, std::string_view descriptor_set,
                        const std::string& registered_by, std::string& detail);
    // The serialized FileDescriptorSet of `name`; nullptr if unknown.
    const std::string* find(const std::string& name) const;
    void list(v1::TypeList& out) const;

private:
    struct Type {
        std::string descriptor_set;
        std::string registered_by;
    };
    std::size_t max_types_, max_descriptor_size_;
    std::unordered_map<std::string, Type> types_;
};

} // namespace bus::broker
