// Message types known only at run time: the files of a FileDescriptorSet (what busd's type
// registry answers to `$sys.type`, and `protoc --include_imports --descriptor_set_out` writes)
// built into a pool of their own, with a factory for messages of its types. How `bus` and busd's
// HTTP face decode payloads of types they were never compiled with.
#pragma once

#include "bus/error.hpp"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/dynamic_message.h>

#include <memory>
#include <string>
#include <string_view>

namespace bus {

class DescriptorSet {
public:
    // Parses `serialized` and builds every file in it, in order (imports first). On failure,
    // `why` says which file did not build, or that the bytes are not a FileDescriptorSet.
    static Result<std::unique_ptr<DescriptorSet>> build(std::string_view serialized,
                                                        std::string* why = nullptr);

    const google::protobuf::DescriptorPool& pool() const noexcept { return *pool_; }
    // A type of this set by its full name; null if it has none of that name.
    const google::protobuf::Descriptor* find(const std::string& full_name) const;
    // A new, empty message of `type`, which must be one of this set's.
    std::unique_ptr<google::protobuf::Message> make(const google::protobuf::Descriptor* type);

private:
    DescriptorSet() = default;
    std::unique_ptr<google::protobuf::DescriptorPool> pool_;
    std::unique_ptr<google::protobuf::DynamicMessageFactory> factory_;
};

} // namespace bus
