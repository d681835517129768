/// @file
/// Scatter/gather lists (include/linux/scatterlist.h, lib/scatterlist.c): a buffer described as runs of
/// physically contiguous pages, the form a device's DMA engine takes.
///
/// `sg_alloc_table_from_pages(alloc, pages, offset, size)` turns an array of page descriptors (the pages of a
/// vmalloc area, pinned pages, the pages of a block) into an SgTable: neighbouring page frames are merged into one
/// entry, up to a maximum segment length (sg_alloc_table_from_pages_segment).  An entry is the kernel's
/// (page, offset, length) triple; a range-for walks the entries, and `pages()` walks them page by page
/// (for_each_sg_page).  sg_copy_to_buffer / sg_copy_from_buffer move bytes between a list and a linear buffer
/// through the page allocator's addresses (sg_pcopy_to_buffer / sg_pcopy_from_buffer).  VirtualMap::sg_table()
/// builds the list of a vmalloc or vmap address range directly.
///
/// @code
///   kmem::MmapRegion memory(1 << 20, {.alignment = 1 << 20});           // 256 pages, one aligned block
///   kmem::BuddyAllocator<10, 4096, kmem::MmapRegion&> buddy(memory);
///   kmem::Page* lone = buddy.alloc_pages(kmem::gfp::kernel, 0);          // pfn n
///   kmem::Page* four = buddy.alloc_pages(kmem::gfp::kernel, 2);          // pfns n+4 .. n+7, neighbours
///   std::vector<kmem::Page*> pages{lone, four, four + 1, four + 2, four + 3};
///   auto sgt = kmem::sg_alloc_table_from_pages(buddy, pages, 100, 5 * 4096 - 100);
///   assert(sgt && sgt->nents() == 2);                                    // [lone +100, 3996) [four, 16384)
///   for (auto [page, offset, length] : *sgt) assert(length == (page == lone ? 3996u : 16384u));
///   std::vector<char> text(5 * 4096 - 100, 'k');
///   assert(kmem::sg_copy_from_buffer(buddy, *sgt, text.data(), text.size()) == text.size());
///   assert(static_cast<char*>(buddy.page_address(four + 3))[4095] == 'k');
///   buddy.free_pages(four, 2);
///   buddy.free_pages(lone, 0);
/// @endcode
#pragma once

#include <kmem/page.hpp>
#include <kmem/policy/error.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <limits>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kmem {

/// One entry of a scatter list (struct scatterlist): `length` bytes of physically contiguous memory starting
/// `offset` bytes into `page` (sg_page(), sg->offset, sg->length).  Only the first entry of a table built from
/// pages has an offset; the others start on a page boundary.
struct Scatterlist {
    Page* page = nullptr;     ///< The first page of the run (sg_page).
    std::uint32_t offset = 0; ///< Bytes into `page` where the data starts (sg->offset).
    std::uint32_t length = 0; ///< Bytes of data (sg->length).
    /// Same page, offset and length.
    friend bool operator==(const Scatterlist&, const Scatterlist&) = default;
};

template <std::size_t PageSize>
class SgTable;

namespace detail {
/// Builds a table from `pages`; returns the table or the sentence of the first mistake (a free function, so that
/// each caller reports through its own error policy).  `pfn_of(page)` is the page frame number.
template <std::size_t PageSize, class PfnOf>
std::pair<std::optional<SgTable<PageSize>>, std::string>
build_sg_table(std::span<Page* const> pages, std::size_t offset, std::uint64_t size,
               std::uint64_t max_segment, PfnOf&& pfn_of);
} // namespace detail

/// A scatter/gather table (struct sg_table): the entries of one buffer, in order.  Built by
/// sg_alloc_table_from_pages() or VirtualMap::sg_table(); iterate it with a range-for over Scatterlist entries.
template <std::size_t PageSize>
class SgTable {
public:
    /// Bytes per page.
    static constexpr std::size_t page_size = PageSize;
    /// The longest entry by default (SCATTERLIST_MAX_SEGMENT: UINT_MAX rounded down to a page).
    static constexpr std::uint64_t max_segment = std::numeric_limits<std::uint32_t>::max() & ~(PageSize - 1);

    /// An empty table.
    SgTable() = default;

    /// The entries (sgt->sgl).
    const Scatterlist* begin() const noexcept { return sgl_.data(); }
    /// One past the last entry.
    const Scatterlist* end() const noexcept { return sgl_.data() + sgl_.size(); }
    /// The number of entries (sgt->nents; orig_nents is the same, nothing here is DMA-mapped).
    std::size_t nents() const noexcept { return sgl_.size(); }
    /// True when the table has no entry.
    bool empty() const noexcept { return sgl_.empty(); }
    /// Entry `i`.
    const Scatterlist& operator[](std::size_t i) const noexcept { return sgl_[i]; }
    /// The bytes the entries describe, summed.
    std::uint64_t total_length() const noexcept {
        std::uint64_t n = 0;
        for (const Scatterlist& sg : sgl_) n += sg.length;
        return n;
    }

    /// Walks the entries one page at a time (for_each_sg_page): each step is a Scatterlist whose page is one page
    /// of an entry and whose offset and length stay inside that page.
    class PageIterator {
    public:
        using iterator_category = std::forward_iterator_tag; ///< Forward iteration.
        using value_type = Scatterlist;                      ///< A piece of one page.
        using difference_type = std::ptrdiff_t;              ///< Distance.
        using pointer = void;                                ///< Values are computed.
        using reference = Scatterlist;                       ///< Values are computed.
        PageIterator() = default;                            ///< A singular iterator.
        /// The piece of a page this step stands for.
        Scatterlist operator*() const noexcept {
            const Scatterlist& sg = *entry_;
            const std::uint64_t end = std::uint64_t{sg.offset} + sg.length;
            const std::uint64_t in_page = pos_ % PageSize;
            const std::uint64_t left = end - pos_;
            return {sg.page + pos_ / PageSize, static_cast<std::uint32_t>(in_page),
                    static_cast<std::uint32_t>(left < PageSize - in_page ? left : PageSize - in_page)};
        }
        /// The next piece.
        PageIterator& operator++() noexcept {
            const Scatterlist& sg = *entry_;
            pos_ = (pos_ / PageSize + 1) * PageSize;
            if (pos_ >= std::uint64_t{sg.offset} + sg.length) {
                ++entry_;
                pos_ = entry_ == last_ ? 0 : entry_->offset;
            }
            return *this;
        }
        /// The next piece (postfix).
        PageIterator operator++(int) noexcept {
            PageIterator old = *this;
            ++*this;
            return old;
        }
        /// Same position.
        friend bool operator==(const PageIterator& a, const PageIterator& b) noexcept {
            return a.entry_ == b.entry_ && a.pos_ == b.pos_;
        }

    private:
        friend class SgTable;
        PageIterator(const Scatterlist* entry, const Scatterlist* last) noexcept
            : entry_(entry), last_(last), pos_(entry == last ? 0 : entry->offset) {}
        const Scatterlist* entry_ = nullptr;
        const Scatterlist* last_ = nullptr;
        std::uint64_t pos_ = 0; // byte position inside the current entry, counted from its page's start
    };
    /// The pages of the table as a range (for_each_sg_page).
    struct PageRange {
        PageIterator first; ///< The first piece.
        PageIterator last;  ///< One past the last piece.
        /// The first piece.
        PageIterator begin() const noexcept { return first; }
        /// One past the last piece.
        PageIterator end() const noexcept { return last; }
    };
    /// The entries page by page (for_each_sg_page); the number of pieces is the number of pages the buffer
    /// touches.
    PageRange pages() const noexcept { return {PageIterator(begin(), end()), PageIterator(end(), end())}; }

private:
    template <std::size_t P, class PfnOf>
    friend std::pair<std::optional<SgTable<P>>, std::string>
    detail::build_sg_table(std::span<Page* const>, std::size_t, std::uint64_t, std::uint64_t, PfnOf&&);
    std::vector<Scatterlist> sgl_;
};

namespace detail {

template <std::size_t PageSize, class PfnOf>
std::pair<std::optional<SgTable<PageSize>>, std::string>
build_sg_table(std::span<Page* const> pages, std::size_t offset, std::uint64_t size,
               std::uint64_t max_segment, PfnOf&& pfn_of) {
    using std::to_string;
    const auto fail = [](std::string why) {
        return std::pair<std::optional<SgTable<PageSize>>, std::string>{std::nullopt, std::move(why)};
    };
    if (pages.empty()) return fail("no pages were given; a scatter list describes at least one page.");
    if (offset >= PageSize)
        return fail("the offset " + to_string(offset) + " is not inside the first page (" +
                    to_string(PageSize) + " bytes).");
    if (size == 0) return fail("a size of 0 bytes was asked; a scatter list describes at least one byte.");
    const std::uint64_t need = size > std::numeric_limits<std::uint64_t>::max() - PageSize
                                   ? std::numeric_limits<std::uint64_t>::max()
                                   : (std::uint64_t{offset} + size - 1) / PageSize + 1;
    if (need != pages.size())
        return fail(to_string(size) + " bytes from offset " + to_string(offset) + " need " + to_string(need) +
                    (need == 1 ? " page but " : " pages but ") + to_string(pages.size()) +
                    " were given; the pages must cover exactly the buffer.");
    max_segment &= ~std::uint64_t{PageSize - 1}; // the kernel rounds the segment limit down to whole pages
    if (max_segment == 0 || max_segment > SgTable<PageSize>::max_segment)
        return fail("the maximum segment must be between one page (" + to_string(PageSize) + " bytes) and " +
                    to_string(SgTable<PageSize>::max_segment) + " bytes.");
    SgTable<PageSize> table;
    std::uint64_t left = size;
    std::uint64_t first_offset = offset;
    const std::uint64_t pages_per_segment = max_segment / PageSize;
    for (std::size_t i = 0; i < pages.size();) { // one entry per run of neighbouring frames
        std::size_t j = i + 1;
        while (j < pages.size() && j - i < pages_per_segment && pfn_of(pages[j]) == pfn_of(pages[j - 1]) + 1)
            ++j;
        const std::uint64_t chunk = (j - i) * std::uint64_t{PageSize} - first_offset;
        const std::uint64_t len = chunk < left ? chunk : left;
        table.sgl_.push_back(
            {pages[i], static_cast<std::uint32_t>(first_offset), static_cast<std::uint32_t>(len)});
        left -= len;
        first_offset = 0;
        i = j;
    }
    return {std::move(table), {}};
}

// Reports `why` for operation `op` through an error policy as ErrorKind `kind`.
template <class ErrorPolicy>
void report_sg(ErrorPolicy& policy, ErrorKind kind, std::string_view op, std::string why) {
    policy.on_error(UsageError{kind, op, std::move(why)});
}

} // namespace detail

/// Builds the scatter list of a buffer held by `pages` (sg_alloc_table_from_pages_segment): the data starts
/// `offset` bytes into the first page and is `size` bytes long, so the pages must be exactly the
/// ceil((offset + size) / PageSize) pages that hold it.  Neighbouring page frames share an entry of at most
/// `max_segment` bytes (rounded down to whole pages; by default SgTable::max_segment, as the kernel's
/// sg_alloc_table_from_pages).  `alloc` is the page allocator the pages come from (BuddyAllocator, or a
/// VirtualMap, which answers for its own).  Returns std::nullopt when the table cannot be allocated; a bad
/// argument (no pages, a null or foreign page, an offset outside the first page, a size that does not match the
/// pages, a segment limit below one page) is reported through `alloc`'s error policy and also gives std::nullopt.
template <class Alloc>
std::optional<SgTable<Alloc::page_size>>
sg_alloc_table_from_pages(Alloc& alloc, std::span<Page* const> pages, std::size_t offset, std::uint64_t size,
                          std::uint64_t max_segment = SgTable<Alloc::page_size>::max_segment) {
    constexpr std::string_view op = "sg_alloc_table_from_pages";
    for (std::size_t k = 0; k < pages.size(); ++k) {
        const std::string which = "page " + std::to_string(k) + " of " + std::to_string(pages.size());
        if (pages[k] == nullptr) {
            detail::report_sg(alloc.error_policy(), ErrorKind::bad_parameter, op,
                              which + " is a null pointer.");
            return std::nullopt;
        }
        if (alloc.mem_map().index_of(pages[k]) == Page::nil) {
            detail::report_sg(alloc.error_policy(), ErrorKind::out_of_region, op,
                              which + " is not a page descriptor of this page allocator.");
            return std::nullopt;
        }
    }
    try {
        auto [table, why] = detail::build_sg_table<Alloc::page_size>(
            pages, offset, size, max_segment, [&](const Page* p) { return alloc.mem_map().page_to_pfn(p); });
        if (!table) detail::report_sg(alloc.error_policy(), ErrorKind::bad_parameter, op, std::move(why));
        return std::move(table);
    } catch (const std::bad_alloc&) { // the kernel returns -ENOMEM
        return std::nullopt;
    }
}

namespace detail {
// Copies between the list (from byte `skip` of the data) and a linear buffer; `to_buffer` picks the direction.
template <class Alloc, std::size_t PageSize>
std::size_t sg_copy(const Alloc& alloc, const SgTable<PageSize>& sgt, std::byte* buf, std::size_t buflen,
                    std::uint64_t skip, bool to_buffer) {
    static_assert(Alloc::page_size == PageSize,
                  "the scatter list and the page allocator differ in PageSize.");
    std::size_t done = 0;
    for (const Scatterlist& sg : sgt) {
        if (done == buflen) break;
        if (skip >= sg.length) {
            skip -= sg.length;
            continue;
        }
        // An entry is a run of neighbouring frames, so its bytes are contiguous at the page's address.
        auto* data = static_cast<std::byte*>(alloc.mem_map().page_address(sg.page)) + sg.offset + skip;
        const std::uint64_t avail = sg.length - skip;
        const std::size_t n = avail < buflen - done ? static_cast<std::size_t>(avail) : buflen - done;
        if (to_buffer)
            std::memcpy(buf + done, data, n);
        else
            std::memcpy(data, buf + done, n);
        done += n;
        skip = 0;
    }
    return done;
}
} // namespace detail

/// Copies up to `buflen` bytes of the list's data, starting `skip` bytes in, into `buf` (sg_pcopy_to_buffer);
/// returns the number of bytes copied.  The pages are read through `alloc`'s addresses (page_address).
template <class Alloc, std::size_t PageSize>
std::size_t sg_copy_to_buffer(const Alloc& alloc, const SgTable<PageSize>& sgt, void* buf, std::size_t buflen,
                              std::uint64_t skip = 0) {
    return detail::sg_copy(alloc, sgt, static_cast<std::byte*>(buf), buflen, skip, true);
}

/// Copies up to `buflen` bytes from `buf` into the list's data, starting `skip` bytes in (sg_pcopy_from_buffer);
/// returns the number of bytes copied.
template <class Alloc, std::size_t PageSize>
std::size_t sg_copy_from_buffer(const Alloc& alloc, const SgTable<PageSize>& sgt, const void* buf,
                                std::size_t buflen, std::uint64_t skip = 0) {
    return detail::sg_copy(alloc, sgt, static_cast<std::byte*>(const_cast<void*>(buf)), buflen, skip, false);
}

} // namespace kmem
