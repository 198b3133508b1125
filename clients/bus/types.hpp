// Where `bus` finds the protobuf types of the payloads it shows and sends: the Types catalogue.
#pragma once

#include <utility> // before Asio (Boost 1.74 misses it: DESIGN.md)

#include <bus/client.hpp>
#include <bus/descriptor_set.hpp>

#include <boost/asio/io_context.hpp>
#include <google/protobuf/compiler/importer.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/dynamic_message.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace bus::cli {

std::string type_name_of(std::string_view type_url); // the url without its prefix

// Where `bus` finds a type: files the user gave (--proto, --descriptor-set), the types it was
// built with, and busd's registry ($sys.type), asked once per name.
class Types {
public:
    Types();
    ~Types();
    // --proto FILE with -I DIRs (default: the file's directory). Failure(usage) on errors.
    void load_proto(const std::string& file, std::vector<std::string> import_dirs);
    void load_descriptor_set(const std::string& file);

    // Known without asking busd; null if not.
    const google::protobuf::Descriptor* find_local(const std::string& name) const;
    // Whether the registry was asked about `name` (answered or not).
    bool fetched(const std::string& name) const { return fetched_.count(name) != 0; }
    // Local, else what the registry answered; null while unknown. `error` says why.
    const google::protobuf::Descriptor* find(const std::string& name,
                                             std::string* error = nullptr) const;

    // Asks busd for `name` (once; later callers wait for the same answer), then calls `done`.
    void fetch(Client& client, const std::string& name, std::function<void()> done);
    // fetch(), running `io` until busd answered; false when SIGINT/SIGTERM came first.
    bool fetch_wait(boost::asio::io_context& io, Client& client, const std::string& name);
    // Blocking: local or registry; Failure(usage) if neither knows it.
    const google::protobuf::Descriptor* resolve(boost::asio::io_context& io, Client& client,
                                                const std::string& name);

    std::unique_ptr<google::protobuf::Message> make(const google::protobuf::Descriptor* d) const;

private:
    struct Fetched {
        const google::protobuf::Descriptor* type = nullptr;
        std::string error;
    };
    const google::protobuf::DescriptorPool* importer_pool() const;

    // --proto: the importer owns its pool.
    std::unique_ptr<google::protobuf::compiler::DiskSourceTree> source_tree_;
    std::unique_ptr<google::protobuf::compiler::MultiFileErrorCollector> errors_;
    std::unique_ptr<google::protobuf::compiler::Importer> importer_;
    std::unique_ptr<google::protobuf::DynamicMessageFactory> importer_factory_;
    std::vector<std::unique_ptr<DescriptorSet>> pools_; // --descriptor-set, then fetched types
    std::map<std::string, Fetched> fetched_;
    std::map<std::string, std::vector<std::function<void()>>> waiting_;
};

} // namespace bus::cli
