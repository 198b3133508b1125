#include "broker/type_registry.hpp"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>

namespace bus::broker {

std::error_code TypeRegistry::add(const std::string& name, std::string_view descriptor_set,
                                  const std::string& registered_by, std::string& detail) {
    if (descriptor_set.size() > max_descriptor_size_) {
        detail = "type descriptor";
        return make_error_code(errc::message_too_large);
    }
    if (!types_.count(name) && types_.size() >= max_types_) {
        detail = "type registry full";
        return make_error_code(errc::forbidden);
    }
    google::protobuf::FileDescriptorSet set;
    if (!set.ParseFromArray(descriptor_set.data(), static_cast<int>(descriptor_set.size()))) {
        detail = "not a FileDescriptorSet";
        return make_error_code(errc::bad_frame);
    }
    google::protobuf::DescriptorPool pool;
    for (const auto& file : set.file()) {
        if (!pool.BuildFile(file)) {
            detail = "inconsistent descriptors";
            return make_error_code(errc::bad_frame);
        }
    }
    if (!pool.FindMessageTypeByName(name)) {
        detail = "the set does not define " + name;
        return make_error_code(errc::bad_frame);
    }
    types_[name] = Type{std::string(descriptor_set), registered_by};
    return {};
}

const std::string* TypeRegistry::find(const std::string& name) const {
    auto it = types_.find(name);
    return it == types_.end() ? nullptr : &it->second.descriptor_set;
}

void TypeRegistry::list(v1::TypeList& out) const {
    for (const auto& [name, type] : types_) {
        auto* t = out.add_types();
        t->set_name(name);
        t->set_registered_by(type.registered_by);
        t->set_descriptor_bytes(static_cast<std::uint32_t>(type.descriptor_set.size()));
    }
}

} // namespace bus::broker
