/// @file
/// The free ranges of a VirtualMap's address space (mm/vmalloc.c's free_vmap_area_root and its augmented
/// rbtree): by address, to merge neighbours, and by size, for a best fit in O(log n).  Not part of the API; used
/// by kmem/vmap.hpp.
#pragma once

#include <array>
#include <cstdint>
#include <iterator>
#include <map>
#include <set>
#include <string>
#include <utility>

namespace kmem::detail {

/// The free ranges of a VirtualMap's window (the kernel's free_vmap_area_root): by address, to merge neighbours,
/// and by size, for a best fit in O(log n).  The nodes a change needs are made by the caller before it takes the
/// lock (Nodes), and nodes a change frees are handed back in the same Nodes, so that nothing under the lock
/// allocates or frees memory.
class VaSpace {
public:
    using by_addr_type = std::map<std::uintptr_t, std::uintptr_t>;            // start -> length
    using by_size_type = std::set<std::pair<std::uintptr_t, std::uintptr_t>>; // (length, start)
    /// Spare nodes: filled before the lock is taken, emptied (destroyed) after it is released.
    struct Nodes {
        std::array<by_addr_type::node_type, 2> addr; ///< Map nodes.
        std::array<by_size_type::node_type, 2> size; ///< Set nodes.
        /// One node of each kind, for a give() that merges with nothing.  May throw std::bad_alloc.
        static Nodes one() {
            Nodes n;
            by_addr_type m;
            m.emplace(0, 0);
            n.addr[0] = m.extract(m.begin());
            by_size_type s;
            s.emplace(0, 0);
            n.size[0] = s.extract(s.begin());
            return n;
        }
        template <class Node>
        static void keep(std::array<Node, 2>& slots, Node&& node) noexcept {
            for (Node& s : slots)
                if (s.empty()) {
                    s = std::move(node);
                    return;
                }
        }
        template <class Node>
        static Node take(std::array<Node, 2>& slots) noexcept {
            for (Node& s : slots)
                if (!s.empty()) return std::move(s);
            return {};
        }
    };

    /// Makes [start, start + length) the one free range.
    void init(std::uintptr_t start, std::uintptr_t length) {
        by_addr_.emplace(start, length);
        by_size_.emplace(length, start);
        free_ = length;
    }
    /// Takes `length` bytes from the smallest free range that holds them (the lowest such range among equals);
    /// returns its start, or 0 when no range is large enough.  O(log n); nodes freed go to `spare`.
    std::uintptr_t take(std::uintptr_t length, Nodes& spare) noexcept {
        auto it = by_size_.lower_bound({length, 0});
        if (it == by_size_.end()) return 0;
        const auto [have, start] = *it;
        auto size_node = by_size_.extract(it);
        auto addr_node = by_addr_.extract(start);
        if (have > length) { // the rest stays free: reuse both nodes
            size_node.value() = {have - length, start + length};
            addr_node.key() = start + length;
            addr_node.mapped() = have - length;
            by_size_.insert(std::move(size_node));
            by_addr_.insert(std::move(addr_node));
        } else {
            Nodes::keep(spare.size, std::move(size_node));
            Nodes::keep(spare.addr, std::move(addr_node));
        }
        free_ -= length;
        return start;
    }
    /// Returns [start, start + length), merging it with free neighbours; `spare` must hold one node of each kind
    /// (used when nothing merges); nodes left over or freed go back to `spare`.  O(log n).
    void give(std::uintptr_t start, std::uintptr_t length, Nodes& spare) noexcept {
        auto next = by_addr_.lower_bound(start);
        auto prev = next == by_addr_.begin() ? by_addr_.end() : std::prev(next);
        const bool with_prev = prev != by_addr_.end() && prev->first + prev->second == start;
        const bool with_next = next != by_addr_.end() && start + length == next->first;
        std::uintptr_t new_start = start, new_length = length;
        if (with_next) {
            new_length += next->second;
            Nodes::keep(spare.size, by_size_.extract({next->second, next->first}));
            Nodes::keep(spare.addr, by_addr_.extract(next));
        }
        if (with_prev) {
            new_start = prev->first;
            new_length += prev->second;
            auto size_node = by_size_.extract({prev->second, prev->first});
            prev->second = new_length;
            size_node.value() = {new_length, new_start};
            by_size_.insert(std::move(size_node));
        } else {
            auto addr_node = Nodes::take(spare.addr);
            auto size_node = Nodes::take(spare.size);
            addr_node.key() = new_start;
            addr_node.mapped() = new_length;
            size_node.value() = {new_length, new_start};
            by_addr_.insert(std::move(addr_node));
            by_size_.insert(std::move(size_node));
        }
        free_ += length;
    }
    /// Free bytes.
    std::uintptr_t free_bytes() const noexcept { return free_; }
    /// The largest free range in bytes, 0 when none.
    std::uintptr_t largest() const noexcept { return by_size_.empty() ? 0 : by_size_.rbegin()->first; }
    /// The free ranges, by address.
    const by_addr_type& ranges() const noexcept { return by_addr_; }
    /// The first inconsistency between the two indexes or with the free count, or "".
    std::string check() const {
        if (by_addr_.size() != by_size_.size())
            return "the free ranges by address and by size differ in number";
        std::uintptr_t sum = 0, last_end = 0;
        for (const auto& [start, length] : by_addr_) {
            if (length == 0) return "a free range of the window is empty";
            if (start < last_end) return "two free ranges of the window overlap";
            if (start == last_end && sum != 0)
                return "two free ranges of the window touch but were not merged";
            if (by_size_.count({length, start}) != 1) return "a free range is missing from the index by size";
            sum += length;
            last_end = start + length;
        }
        if (sum != free_) return "the free ranges do not add up to the free byte count";
        return {};
    }

private:
    by_addr_type by_addr_;
    by_size_type by_size_;
    std::uintptr_t free_ = 0;
};

} // namespace kmem::detail
