// The Types catalogue (types.hpp).
#include "types.hpp"

#include "connect.hpp"
#include "loop.hpp"

#include <bus/frame.hpp>
#include <bus/v1/broker.pb.h>
#include <bus/v1/cluster.pb.h>

#include <google/protobuf/descriptor.pb.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace bus::cli {

namespace pb = google::protobuf;

std::string type_name_of(std::string_view type_url) {
    if (type_url.starts_with(frame::type_url_prefix))
        type_url.remove_prefix(frame::type_url_prefix.size());
    return std::string(type_url);
}

namespace {

class CollectErrors : public pb::compiler::MultiFileErrorCollector {
public:
    void AddError(const std::string& file, int line, int column,
                  const std::string& message) override {
        text += file + ":" + std::to_string(line + 1) + ":" + std::to_string(column + 1) + ": " +
                message + "\n";
    }
    std::string text;
};

std::string read_file(const std::string& path, const std::string& what) {
    std::ifstream in(path, std::ios::binary);
    if (!in)
        throw Failure(exit_code::usage, "cannot read " + what + " " + path);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

} // namespace

Types::Types() {
    // bus's own types are always known: naming them links their descriptors into the binary
    // (a static library would otherwise leave the unreferenced ones out).
    (void)v1::Envelope::descriptor();
    (void)v1::BrokerStats::descriptor();
    (void)v1::Heartbeat::descriptor();
}
Types::~Types() = default;

void Types::load_proto(const std::string& file, std::vector<std::string> import_dirs) {
    namespace fs = std::filesystem;
    if (!fs::exists(file))
        throw Failure(exit_code::usage, "--proto: " + file + " does not exist");
    if (import_dirs.empty())
        import_dirs.push_back(fs::path(file).parent_path().empty()
                                  ? std::string(".")
                                  : fs::path(file).parent_path().string());
    source_tree_ = std::make_unique<pb::compiler::DiskSourceTree>();
    for (const auto& dir : import_dirs)
        source_tree_->MapPath("", dir);
    // Where Debian keeps google/protobuf/*.proto, for files that import the well-known types.
    if (fs::exists("/usr/include/google/protobuf/timestamp.proto"))
        source_tree_->MapPath("", "/usr/include");
    // The file's name as its imports would spell it: its path under an -I directory.
    std::string relative;
    for (const auto& dir : import_dirs) {
        const auto rel = fs::absolute(file).lexically_normal().lexically_relative(
            fs::absolute(dir).lexically_normal());
        if (!rel.empty() && *rel.begin() != "..") {
            relative = rel.string();
            break;
        }
    }
    if (relative.empty())
        throw Failure(exit_code::usage,
                      "--proto: " + file + " is not under any -I directory given");
    auto errors = std::make_unique<CollectErrors>();
    auto* collected = errors.get();
    errors_ = std::move(errors);
    importer_ = std::make_unique<pb::compiler::Importer>(source_tree_.get(), errors_.get());
    if (!importer_->Import(relative))
        throw Failure(exit_code::usage,
                      "--proto: " + file + " does not compile:\n" + collected->text);
    importer_factory_ = std::make_unique<pb::DynamicMessageFactory>(importer_->pool());
}

void Types::load_descriptor_set(const std::string& file) {
    std::string why;
    auto set = DescriptorSet::build(read_file(file, "--descriptor-set"), &why);
    if (!set)
        throw Failure(exit_code::usage, "--descriptor-set: " + file + ": " + why +
                                            " (make one with protoc --include_imports "
                                            "--descriptor_set_out=FILE)");
    pools_.insert(pools_.begin(), std::move(set).value());
}

const pb::DescriptorPool* Types::importer_pool() const {
    return importer_ ? importer_->pool() : nullptr;
}

const pb::Descriptor* Types::find_local(const std::string& name) const {
    if (auto* p = importer_pool())
        if (auto* d = p->FindMessageTypeByName(name))
            return d;
    for (const auto& p : pools_)
        if (auto* d = p->find(name))
            return d;
    return pb::DescriptorPool::generated_pool()->FindMessageTypeByName(name);
}

const pb::Descriptor* Types::find(const std::string& name, std::string* error) const {
    if (auto* d = find_local(name))
        return d;
    if (auto it = fetched_.find(name); it != fetched_.end()) {
        if (error)
            *error = it->second.error;
        return it->second.type;
    }
    if (error)
        *error = "unknown type " + name;
    return nullptr;
}

void Types::fetch(Client& client, const std::string& name, std::function<void()> done) {
    if (find_local(name) || fetched_.count(name)) {
        done();
        return;
    }
    auto& waiters = waiting_[name];
    waiters.push_back(std::move(done));
    if (waiters.size() > 1)
        return; // asked already
    client.request_bytes(
        "$sys.type", name, std::chrono::seconds(5), [this, name](std::error_code ec, Message& m) {
            Fetched f;
            std::string why;
            if (ec == errc::no_responders) {
                f.error = "type " + name + " is not registered with busd (see `bus ls types`)";
            } else if (ec) {
                f.error = "cannot ask busd for type " + name + ": " + ec.message();
            } else if (auto set = DescriptorSet::build(m.payload(), &why); !set) {
                f.error = "busd's descriptor of " + name + ": " + why;
            } else if (!(f.type = set.value()->find(name))) {
                f.error = "busd's descriptor of " + name + " does not define it";
            } else {
                pools_.push_back(std::move(set).value());
            }
            fetched_[name] = std::move(f);
            auto callbacks = std::move(waiting_[name]);
            waiting_.erase(name);
            for (auto& w : callbacks)
                w();
        });
}

bool Types::fetch_wait(boost::asio::io_context& io, Client& client, const std::string& name) {
    // Shared with the callback, which an interrupted wait leaves waiting for busd's answer.
    auto done = std::make_shared<bool>(false);
    fetch(client, name, [done] { *done = true; });
    return run_until_done(io, [&] { return *done; });
}

const pb::Descriptor* Types::resolve(boost::asio::io_context& io, Client& client,
                                     const std::string& name) {
    const bool answered = fetch_wait(io, client, name);
    std::string error;
    if (auto* d = find(name, &error))
        return d;
    if (!answered)
        throw Failure(exit_code::failure, "interrupted");
    throw Failure(exit_code::usage, error);
}

std::unique_ptr<pb::Message> Types::make(const pb::Descriptor* d) const {
    const pb::Message* prototype = nullptr;
    if (d->file()->pool() == pb::DescriptorPool::generated_pool())
        prototype = pb::MessageFactory::generated_factory()->GetPrototype(d);
    else if (importer_ && d->file()->pool() == importer_->pool())
        prototype = importer_factory_->GetPrototype(d);
    else
        for (const auto& p : pools_)
            if (d->file()->pool() == &p->pool())
                return p->make(d);
    if (!prototype)
        throw std::logic_error("bus: no factory for " + d->full_name());
    return std::unique_ptr<pb::Message>(prototype->New());
}

} // namespace bus::cli
