/// @file
/// The summary every kmem benchmark program prints after Google Benchmark's own output: cases registered with
/// the number of operations one iteration performs, a console reporter that keeps each case's median, and
/// tables of nanoseconds per operation, ratios against peers measured in the same run, and PASS/MISS against
/// targets.  A MISS is reported, never turned into a failing exit status.
///
/// @code
///   kmem::bench::add("kmem/order0", 1, order0_case);                  // in the register function
///   kmem::bench::add("malloc/order0", 1, malloc_case);
///   ...
///   void print_summary(const kmem::bench::Results& results) {       // called after the run
///       kmem::bench::Verdicts verdicts;
///       kmem::bench::PeerTable table(results, verdicts, {{"malloc", "/malloc"}});
///       table.header("-- order-0 pair --");
///       table.row("kmem", "kmem/order0", "order0", 15.0);           // ns/pair, /malloc ratio, <=15, PASS
///       table.peer_row("  malloc/free", "malloc/order0");
///       kmem::bench::print_footer(verdicts);
///   }
/// @endcode
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kmem::bench {

// ----- registration ----------------------------------------------------------------------------------------

/// Operations (e.g. alloc+free pairs) per iteration of each registered case, by case name.
inline std::map<std::string, double, std::less<>>& units_per_iteration() {
    static std::map<std::string, double, std::less<>> units;
    return units;
}

/// Registers a case with Google Benchmark, timed in nanoseconds.  `units` is the number of operations one
/// iteration performs, so that the summary reports time per operation.  The name doubles as the case's key
/// in the summary.
template <class Fn>
benchmark::internal::Benchmark* add(const std::string& name, double units, Fn&& fn) {
    units_per_iteration()[name] = units;
    return benchmark::RegisterBenchmark(name.c_str(), std::forward<Fn>(fn))->Unit(benchmark::kNanosecond);
}

// ----- collecting the medians ------------------------------------------------------------------------------

/// Passes everything to the console reporter and keeps, per case, the "median" aggregate (or, when run with
/// --benchmark_repetitions=1, the median of the iteration runs it saw).
class MedianReporter : public benchmark::ConsoleReporter {
public:
    explicit MedianReporter(OutputOptions opts) : ConsoleReporter(opts) {}

    void ReportRuns(const std::vector<Run>& reports) override {
        for (const Run& r : reports) {
            if (failed(r)) continue;
            const std::string& name = r.run_name.function_name;
            if (r.run_type == Run::RT_Aggregate) {
                if (r.aggregate_name == "median") {
                    medians_[name] = r.GetAdjustedRealTime();
                    cpu_medians_[name] = r.GetAdjustedCPUTime();
                }
            } else {
                samples_[name].push_back(r.GetAdjustedRealTime());
            }
        }
        ConsoleReporter::ReportRuns(reports);
    }

    /// Nanoseconds per iteration, or nullopt when the case did not run.
    std::optional<double> median(std::string_view name) const {
        if (auto it = medians_.find(name); it != medians_.end()) return it->second;
        if (auto it = samples_.find(name); it != samples_.end() && !it->second.empty()) {
            std::vector<double> v = it->second;
            std::sort(v.begin(), v.end());
            const std::size_t m = v.size() / 2;
            return v.size() % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
        }
        return std::nullopt;
    }

    /// True when the median real time exceeds the median CPU time by more than 10%: the process was
    /// preempted (other work on the machine), so that figure is inflated.
    bool preempted(std::string_view name) const {
        const auto r = medians_.find(name);
        const auto c = cpu_medians_.find(name);
        return r != medians_.end() && c != cpu_medians_.end() && r->second > 1.10 * c->second;
    }

private:
    // Google Benchmark 1.8 replaced Run::error_occurred by Run::skipped.
    template <class R>
    static bool failed(const R& r) {
        if constexpr (requires { r.error_occurred; }) {
            return r.error_occurred;
        } else {
            return static_cast<bool>(r.skipped);
        }
    }

    std::map<std::string, double, std::less<>> medians_;
    std::map<std::string, double, std::less<>> cpu_medians_;
    std::map<std::string, std::vector<double>, std::less<>> samples_;
};

// ----- figures ---------------------------------------------------------------------------------------------

/// `v` printed with `fmt`, or "n/a" when there is no value.
inline std::string format_value(std::optional<double> v, const char* fmt = "%.1f") {
    if (!v) return "n/a";
    char buf[32];
    std::snprintf(buf, sizeof buf, fmt, *v);
    return buf;
}

/// a / b, or nullopt when either is missing or b is not positive.
inline std::optional<double> ratio(std::optional<double> a, std::optional<double> b) {
    if (!a || !b || *b <= 0) return std::nullopt;
    return *a / *b;
}

/// The measured medians, per operation.
class Results {
public:
    explicit Results(const MedianReporter& reporter) : reporter_(reporter) {}

    /// Median nanoseconds per operation (per iteration / the case's units), or nullopt when it did not run.
    std::optional<double> ns(std::string_view name) const {
        const auto t = reporter_.median(name);
        if (!t) return std::nullopt;
        const auto& units = units_per_iteration();
        const auto it = units.find(name);
        return *t / (it == units.end() ? 1.0 : it->second);
    }

    /// True when the case's figure was measured while the process was preempted.
    bool preempted(std::string_view name) const { return reporter_.preempted(name); }

    /// The ns figure of a case as printed in a table: "%.1f", with '*' when measured while preempted.
    std::string cell(std::string_view name) const {
        return format_value(ns(name)) + (preempted(name) ? "*" : "");
    }

private:
    const MedianReporter& reporter_;
};

/// Judges figures against targets and counts the outcomes.
class Verdicts {
public:
    /// "-" without a limit; "n/a" when the value is missing; otherwise "PASS" (value <= limit, counted) or
    /// "MISS" (counted).
    std::string judge(std::optional<double> value, std::optional<double> limit) {
        if (!limit) return "-";
        if (!value) return "n/a";
        const bool pass = *value <= *limit;
        (pass ? passes_ : misses_) += 1;
        return pass ? "PASS" : "MISS";
    }

    int passes() const { return passes_; }
    int misses() const { return misses_; }

private:
    int passes_ = 0;
    int misses_ = 0;
};

// ----- tables ----------------------------------------------------------------------------------------------

/// A fixed-width text table: a title, a heading line, a rule, then rows.
class Table {
public:
    struct Column {
        std::string heading;
        int width = 0;     ///< printf field width; 0 prints the text as it is
        bool left = false; ///< left-aligned (default: right-aligned)
        int gap = 1;       ///< spaces before the column (not before the first)
    };

    Table(std::vector<Column> columns, std::size_t rule_width)
        : columns_(std::move(columns)), rule_width_(rule_width) {}

    /// An empty line, the title, the headings and the rule.
    void header(std::string_view title) const {
        std::printf("\n%.*s\n", static_cast<int>(title.size()), title.data());
        std::vector<std::string> headings;
        for (const Column& c : columns_) headings.push_back(c.heading);
        row(headings);
        std::printf("%s\n", std::string(rule_width_, '-').c_str());
    }

    /// One line: `cells` fill the first cells.size() columns; the rest of the line is left out.
    void row(const std::vector<std::string>& cells) const {
        const std::size_t n = std::min(cells.size(), columns_.size());
        for (std::size_t k = 0; k < n; ++k) {
            const Column& c = columns_[k];
            if (k > 0) std::printf("%*s", c.gap, "");
            std::printf(c.left ? "%-*s" : "%*s", c.width, cells[k].c_str());
        }
        std::printf("\n");
    }

private:
    std::vector<Column> columns_;
    std::size_t rule_width_;
};

/// A peer measured in the same run: its cases are named "<prefix>/<op>"; its ratio column is `heading`.
struct Peer {
    std::string prefix;  ///< e.g. "malloc"
    std::string heading; ///< e.g. "/malloc"
};

/// Widths of a PeerTable's columns (printf field widths) and of its rule.
struct PeerTableLayout {
    std::string unit_heading = "ns/pair"; ///< heading of the ns-per-operation column
    int label_width = 44;
    int number_width = 9; ///< the ns column and each ratio column
    int target_width = 8;
    std::size_t rule_width = 100;
};

/// The comparison table: case | ns per operation | one ratio column per peer | target | result.
class PeerTable {
public:
    using Layout = PeerTableLayout;

    PeerTable(const Results& results, Verdicts& verdicts, std::vector<Peer> peers, const Layout& layout = {})
        : results_(results), verdicts_(verdicts), peers_(std::move(peers)),
          table_(columns(peers_, layout), layout.rule_width) {}

    void header(std::string_view title) const { table_.header(title); }

    /// A measured row: its ns per operation, its ratio to each peer's "<prefix>/<op>" case (this / peer, so
    /// below 1.00x this case is faster; no ratios when `op` is empty), and an optional target in ns (met when
    /// the figure is <= target).
    void row(std::string_view label, std::string_view name, std::string_view op,
             std::optional<double> target) {
        const auto t = results_.ns(name);
        std::vector<std::string> cells{std::string(label), results_.cell(name)};
        for (const Peer& p : peers_) {
            const auto q =
                op.empty() ? std::nullopt : ratio(t, results_.ns(p.prefix + "/" + std::string(op)));
            cells.push_back(format_value(q, "%.2fx"));
        }
        cells.push_back(target ? "<=" + format_value(target, "%.0f") : "-");
        cells.push_back(verdicts_.judge(t, target));
        table_.row(cells);
    }

    /// A peer's row: label and ns per operation only.
    void peer_row(std::string_view label, std::string_view name) const {
        table_.row({std::string(label), results_.cell(name)});
    }

private:
    static std::vector<Table::Column> columns(const std::vector<Peer>& peers, const Layout& layout) {
        std::vector<Table::Column> cols{{"case", layout.label_width, true},
                                        {layout.unit_heading, layout.number_width}};
        for (const Peer& p : peers) cols.push_back({p.heading, layout.number_width});
        cols.push_back({"target", layout.target_width});
        cols.push_back({"result", 0, true, 2});
        return cols;
    }

    const Results& results_;
    Verdicts& verdicts_;
    std::vector<Peer> peers_;
    Table table_;
};

/// An indented "label value" line, for derived figures under a table.
inline void print_figure(std::string_view label, std::optional<double> v, const char* fmt) {
    std::printf("  %-42.*s %s\n", static_cast<int>(label.size()), label.data(), format_value(v, fmt).c_str());
}

/// The closing lines: what '*' means, and the PASS/MISS count.
inline void print_footer(const Verdicts& verdicts) {
    std::printf(
        "\n* median real time > 1.1x median CPU time: the run was preempted by other work; that figure "
        "(and its ratios) is inflated\n");
    std::printf("\ntargets: %d PASS, %d MISS (informational; the exit status does not depend on them)\n",
                verdicts.passes(), verdicts.misses());
}

} // namespace kmem::bench
