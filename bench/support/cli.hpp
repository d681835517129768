/// @file
/// The command line and main() of every kmem benchmark program: Google Benchmark flags given defaults unless
/// the command line sets them (--benchmark_repetitions=5, --benchmark_min_time=0.2,
/// --benchmark_report_aggregates_only=true), the console's colour, and a main() that registers the cases, runs
/// them through a MedianReporter and prints the program's summary.  Any --benchmark_* flag still works.
///
/// @code
///   void register_all() { kmem::bench::add("kmem/order0", 1, order0_case); ... }
///   void print_summary(const kmem::bench::Results& results) { ... }
///
///   int main(int argc, char** argv) {
///       return kmem::bench::run_main(argc, argv, kmem::bench::standard_defaults(), register_all, print_summary);
///   }
/// @endcode
#pragma once

#include "support/report.hpp"

#include <benchmark/benchmark.h>

#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <unistd.h>

namespace kmem::bench {

/// The value of `--flag=value` (or "" for a bare `--flag`) in args[1..], or nullopt when the flag is absent.
inline std::optional<std::string_view> flag_value(std::span<char* const> args, std::string_view flag) {
    for (std::size_t k = 1; k < args.size(); ++k) {
        if (args[k] == nullptr) break;
        const std::string_view a(args[k]);
        if (a.substr(0, flag.size()) != flag) continue;
        if (a.size() == flag.size()) return std::string_view{};
        if (a[flag.size()] == '=') return a.substr(flag.size() + 1);
    }
    return std::nullopt;
}

inline bool has_flag(std::span<char* const> args, std::string_view flag) {
    return flag_value(args, flag).has_value();
}

/// A flag added to the command line unless it already holds one of the flags in `unless`.
struct DefaultFlag {
    std::string arg;                 ///< e.g. "--benchmark_repetitions=5"
    std::vector<std::string> unless; ///< e.g. {"--benchmark_repetitions"}
};

/// The defaults of the kmem benchmarks: 5 repetitions of at least 0.2 s each, aggregates only.  The summary
/// reads the median aggregate (with --benchmark_repetitions=1, the single run).
inline std::vector<DefaultFlag> standard_defaults() {
    return {
        {"--benchmark_repetitions=5", {"--benchmark_repetitions"}},
        {"--benchmark_min_time=0.2", {"--benchmark_min_time"}},
        {"--benchmark_report_aggregates_only=true",
         {"--benchmark_report_aggregates_only", "--benchmark_display_aggregates_only"}},
    };
}

/// The program's arguments followed by the defaults they do not override; argc()/argv() are what
/// benchmark::Initialize() takes (and rewrites).
class CommandLine {
public:
    CommandLine(int argc, char** argv, const std::vector<DefaultFlag>& defaults) {
        const std::span<char* const> given(argv, static_cast<std::size_t>(argc));
        for (const DefaultFlag& d : defaults) {
            bool overridden = false;
            for (const std::string& f : d.unless) overridden = overridden || has_flag(given, f);
            if (!overridden) added_.push_back(d.arg);
        }
        argv_.assign(argv, argv + argc);
        for (std::string& a : added_)
            argv_.push_back(a.data()); // added_ no longer grows: pointers stay valid
        argc_ = static_cast<int>(argv_.size());
        argv_.push_back(nullptr);
    }
    CommandLine(const CommandLine&) = delete;
    CommandLine& operator=(const CommandLine&) = delete;

    int& argc() { return argc_; }
    char** argv() { return argv_.data(); }
    std::span<char* const> args() const { return {argv_.data(), static_cast<std::size_t>(argc_)}; }

private:
    std::vector<std::string> added_;
    std::vector<char*> argv_;
    int argc_ = 0;
};

/// A reporter handed to RunSpecifiedBenchmarks() does not see --benchmark_color, so it is applied here: colour
/// only on a terminal unless the flag says otherwise.  Call it before benchmark::Initialize() consumes the flags.
inline benchmark::ConsoleReporter::OutputOptions console_options(std::span<char* const> args) {
    bool color = ::isatty(STDOUT_FILENO) != 0;
    if (const auto v = flag_value(args, "--benchmark_color")) {
        if (*v == "false" || *v == "no" || *v == "0")
            color = false;
        else if (*v == "true" || *v == "yes" || *v == "1" || v->empty())
            color = true;
    }
    return color ? benchmark::ConsoleReporter::OO_ColorTabular : benchmark::ConsoleReporter::OO_Tabular;
}

/// The whole main(): applies `defaults`, initialises Google Benchmark (exit status 1 on an unrecognised
/// argument), calls `register_cases()`, runs the selected cases through a MedianReporter, then calls
/// `print_summary(const Results&)`.  Returns 0: targets missed in the summary do not fail the process.
template <class Register, class Summarize>
int run_main(int argc, char** argv, const std::vector<DefaultFlag>& defaults, Register&& register_cases,
             Summarize&& print_summary) {
    CommandLine cl(argc, argv, defaults);
    const auto console = console_options(cl.args());
    benchmark::Initialize(&cl.argc(), cl.argv());
    if (benchmark::ReportUnrecognizedArguments(cl.argc(), cl.argv())) return 1;

    register_cases();
    MedianReporter reporter(console);
    benchmark::RunSpecifiedBenchmarks(&reporter);
    print_summary(Results(reporter));
    benchmark::Shutdown();
    return 0;
}

} // namespace kmem::bench
