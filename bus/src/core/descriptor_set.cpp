#include "bus/descriptor_set.hpp"

#include <google/protobuf/descriptor.pb.h>

namespace bus {

Result<std::unique_ptr<DescriptorSet>> DescriptorSet::build(std::string_view serialized,
                                                            std::string* why) {
    google::protobuf::FileDescriptorSet set;
    if (!set.ParseFromArray(serialized.data(), static_cast<int>(serialized.size()))) {
        if (why)
            *why = "not a FileDescriptorSet";
        return make_error_code(errc::wrong_type);
    }
    std::unique_ptr<DescriptorSet> out(new DescriptorSet);
    out->pool_ = std::make_unique<google::protobuf::DescriptorPool>();
    for (const auto& file : set.file())
        if (!out->pool_->BuildFile(file)) {
            if (why)
                *why = file.name() + " does not build (are its imports in the set, before it?)";
            return make_error_code(errc::wrong_type);
        }
    out->factory_ = std::make_unique<google::protobuf::DynamicMessageFactory>(out->pool_.get());
    return out;
}

const google::protobuf::Descriptor* DescriptorSet::find(const std::string& full_name) const {
    return pool_->FindMessageTypeByName(full_name);
}

std::unique_ptr<google::protobuf::Message>
DescriptorSet::make(const google::protobuf::Descriptor* type) {
    return std::unique_ptr<google::protobuf::Message>(factory_->GetPrototype(type)->New());
}

} // namespace bus
