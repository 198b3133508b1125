#include "bridge/config.hpp"

#include "bus/subject.hpp"
#include "core/toml_reader.hpp"

#include <algorithm>
#include <set>

namespace bus::bridge {
namespace {

// What a bridge's patterns may be: bus's patterns, never busd's own `$sys` (NATS has `$SYS`,
// `$JS` and inboxes of its own; none of them are ours to export).
std::vector<std::string> patterns(const detail::TomlReader& t, const char* key) {
    auto out = t.strings(key);
    for (const auto& p : out) {
        if (!valid_pattern(p))
            t.fail(key, "'" + p + "' is not a subject pattern (tokens, *, >)");
        if (p.starts_with("$"))
            t.fail(key, "'" + p + "': subjects beginning with $ are the brokers' own");
    }
    return out;
}

bool valid_name(const std::string& name) {
    return !name.empty() && name.size() <= 64 && std::all_of(name.begin(), name.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_';
    });
}

} // namespace

std::vector<daemon::NatsBridgeConfig> load_nats_bridges(const std::string& path) {
    std::vector<daemon::NatsBridgeConfig> out;
    const toml::table root = detail::parse_toml_file(path);
    const detail::TomlReader r(path, root);
    const auto bridge = r.table("bridge");
    if (!bridge)
        return out;
    bridge->only({"nats"});
    std::set<std::string> names;
    for (const auto& t : bridge->tables("nats")) {
        t.only({"name", "servers", "export", "import", "durable", "user", "password", "token",
                "nkey", "nkey_seed", "creds", "tls", "buffer_bytes", "max_pending",
                "request_timeout_ms", "durable_name"});
        daemon::NatsBridgeConfig c;
        c.name = t.string("name").value_or("");
        if (!valid_name(c.name))
            t.fail("name", "needs a name of letters, digits, - and _ (at most 64)");
        if (!names.insert(c.name).second)
            t.fail("name", "another bridge is named '" + c.name + "'");
        c.servers = t.strings("servers");
        if (c.servers.empty())
            t.fail("servers", "needs at least one server (\"nats://HOST:PORT\")");
        for (const auto& s : c.servers)
            if (!s.starts_with("nats://") && !s.starts_with("tls://"))
                t.fail("servers", "'" + s + "' is not nats://HOST:PORT or tls://HOST:PORT");
        c.exports = patterns(t, "export");
        c.imports = patterns(t, "import");
        c.durables = patterns(t, "durable");
        c.user = t.string("user").value_or("");
        c.password = t.string("password").value_or("");
        c.token = t.string("token").value_or("");
        c.nkey = t.string("nkey").value_or("");
        c.nkey_seed = t.string("nkey_seed").value_or("");
        c.creds = t.string("creds").value_or("");
        if (c.user.empty() != c.password.empty())
            t.fail(c.user.empty() ? "user" : "password", "user and password go together");
        if (c.nkey.empty() != c.nkey_seed.empty())
            t.fail(c.nkey.empty() ? "nkey" : "nkey_seed",
                   "nkey (the public key) and nkey_seed (its seed file) go together");
        const int kinds = !c.user.empty() + !c.token.empty() + !c.nkey.empty() + !c.creds.empty();
        if (kinds > 1)
            t.fail("", "one kind of credentials at most: user/password, token, nkey or creds");
        if (const auto tls = t.table("tls")) {
            tls->only({"ca", "cert", "key"});
            c.tls_ca = tls->string("ca").value_or("");
            c.tls_cert = tls->string("cert").value_or("");
            c.tls_key = tls->string("key").value_or("");
            if (c.tls_cert.empty() != c.tls_key.empty())
                tls->fail(c.tls_cert.empty() ? "cert" : "key", "cert and key go together");
        }
        t.integer("buffer_bytes", c.buffer_bytes, 0, 1ll << 30);
        t.integer("max_pending", c.max_pending, 1, 1 << 24);
        t.duration("request_timeout_ms", c.request_timeout, 1, 3600000);
        c.durable_name = t.string("durable_name").value_or("");
        if (!c.durable_name.empty() && !valid_name(c.durable_name))
            t.fail("durable_name", "letters, digits, - and _ (at most 64)");
        out.push_back(std::move(c));
    }
    return out;
}

} // namespace bus::bridge
