// SubjectTrie stores values under patterns and finds every value whose pattern matches a
// subject, walking one trie level per token, as NATS's sublist does: the cost of a publish
// depends on the subject's length, not on the number of subscriptions. The router keeps its
// subscriptions in one.
#pragma once

#include "bus/subject.hpp"
#include "core/subject_tokens.hpp"

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace bus {

// Hashes std::string keys so that a string_view finds them without building a string.
struct StringHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept {
        return std::hash<std::string_view>{}(s);
    }
};

template <class T>
class SubjectTrie {
public:
    // `pattern` must be valid_pattern().
    void insert(std::string_view pattern, T value) {
        SubjectTokens tokens(pattern);
        Node* node = &root_;
        for (std::size_t i = 0; i < tokens.size(); ++i) {
            const auto token = tokens[i];
            if (token == ">") {
                node->rest_values.push_back(std::move(value));
                ++size_;
                return;
            }
            auto& child = token == "*" ? node->star : node->children[std::string(token)];
            if (!child)
                child = std::make_unique<Node>();
            node = child.get();
        }
        node->values.push_back(std::move(value));
        ++size_;
    }

    // Removes one value equal to `value` stored under `pattern`; false if there was none.
    bool erase(std::string_view pattern, const T& value) {
        SubjectTokens tokens(pattern);
        return erase_at(root_, tokens, 0, value);
    }

    // Calls on_match(value) for every value whose pattern matches `subject`.
    template <class F>
    void match(std::string_view subject, F&& on_match) const {
        SubjectTokens tokens(subject);
        match_at(root_, tokens, 0, on_match);
    }

    std::size_t size() const noexcept { return size_; }

private:
    struct Node {
        std::unordered_map<std::string, std::unique_ptr<Node>, StringHash, std::equal_to<>>
            children;
        std::unique_ptr<Node> star;
        std::vector<T> values;      // patterns that end here
        std::vector<T> rest_values; // patterns that end here with `>`
        bool empty() const {
            return children.empty() && !star && values.empty() && rest_values.empty();
        }
    };

    template <class F>
    static void match_at(const Node& node, const SubjectTokens& tokens, std::size_t i,
                         F& on_match) {
        if (i == tokens.size()) {
            for (const auto& v : node.values)
                on_match(v);
            return;
        }
        for (const auto& v : node.rest_values)
            on_match(v);
        if (auto it = node.children.find(tokens[i]); it != node.children.end())
            match_at(*it->second, tokens, i + 1, on_match);
        if (node.star)
            match_at(*node.star, tokens, i + 1, on_match);
    }

    static bool remove_one(std::vector<T>& values, const T& value) {
        for (auto it = values.begin(); it != values.end(); ++it) {
            if (*it == value) {
                values.erase(it);
                return true;
            }
        }
        return false;
    }

    bool erase_at(Node& node, const SubjectTokens& tokens, std::size_t i, const T& value) {
        if (i == tokens.size())
            return remove_one(node.values, value) && (--size_, true);
        const auto token = tokens[i];
        if (token == ">")
            return remove_one(node.rest_values, value) && (--size_, true);
        // Prune emptied branches so a churn of subscriptions does not grow the trie.
        if (token == "*") {
            if (!node.star || !erase_at(*node.star, tokens, i + 1, value))
                return false;
            if (node.star->empty())
                node.star.reset();
            return true;
        }
        auto it = node.children.find(token);
        if (it == node.children.end() || !erase_at(*it->second, tokens, i + 1, value))
            return false;
        if (it->second->empty())
            node.children.erase(it);
        return true;
    }

    Node root_;
    std::size_t size_ = 0;
};

} // namespace bus
