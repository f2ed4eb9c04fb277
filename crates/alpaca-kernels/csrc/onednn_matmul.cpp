// The one piece of oneDNN alpaca calls (cargo feature `onednn`): its matmul primitive,
// C [m, n] = A [m, k] · B [k, n] (+ bias), with A and B in bf16 (or f32) given by element
// strides and C in f32, row-major. On CPUs with AMX oneDNN runs it on the tile units (brgemm).
//
// Why a C++ file: oneDNN 2.x's C API passes memory descriptors as large structs by value;
// its C++ header builds them, so the Rust side only sees plain integers and pointers.
// Primitives are created once per shape (creation JIT-compiles kernels, milliseconds) and
// kept for the process; a training step uses a dozen shapes.

#include <oneapi/dnnl/dnnl.hpp>
#include <omp.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <unordered_map>

namespace {

using dnnl::memory;

// m, n, k, A strides, B strides, operand type, bias.
using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, bool>;

struct Primitives {
    std::mutex lock;
    dnnl::engine engine{dnnl::engine::kind::cpu, 0};
    std::map<Key, dnnl::matmul> cached;
};

Primitives &primitives() {
    static Primitives instance;
    return instance;
}

memory::data_type operand_type(int bf16) {
    return bf16 ? memory::data_type::bf16 : memory::data_type::f32;
}

// The primitive for this shape, made on first use.
const dnnl::matmul &matmul_for(const Key &key) {
    auto &all = primitives();
    std::lock_guard<std::mutex> guard(all.lock);
    auto found = all.cached.find(key);
    if (found != all.cached.end()) return found->second;
    auto [m, n, k, a_row, a_column, b_row, b_column, bf16, bias] = key;
    memory::desc a_md({m, k}, operand_type(bf16), {a_row, a_column});
    memory::desc b_md({k, n}, operand_type(bf16), {b_row, b_column});
    memory::desc c_md({m, n}, memory::data_type::f32, {n, 1});
    auto desc = bias ? dnnl::matmul::desc(a_md, b_md,
                                          memory::desc({1, n}, memory::data_type::f32, {n, 1}),
                                          c_md)
                     : dnnl::matmul::desc(a_md, b_md, c_md);
    dnnl::matmul made(dnnl::matmul::primitive_desc(desc, all.engine));
    return all.cached.emplace(key, std::move(made)).first->second;
}

// 0 on success, oneDNN's status (or -1) otherwise; `message` gets the reason.
int failure(const std::exception &error, char *message, size_t capacity) {
    if (message && capacity) {
        std::strncpy(message, error.what(), capacity - 1);
        message[capacity - 1] = '\0';
    }
    if (auto dnnl_error = dynamic_cast<const dnnl::error *>(&error))
        return dnnl_error->status ? static_cast<int>(dnnl_error->status) : -1;
    return -1;
}

}  // namespace

extern "C" {

// C [m, n] = A · B (+ bias). A's element (i, j) is at
// a[i·a_row + j·a_column], B's (j, l) at b[j·b_row + l·b_column]; both bf16 bits when
// `bf16`, else f32. `bias` may be null. Runs on `threads` OpenMP threads.
int alpaca_onednn_matmul(int64_t m, int64_t n, int64_t k, const void *a, int64_t a_row,
                         int64_t a_column, const void *b, int64_t b_row, int64_t b_column,
                         int bf16, const float *bias, float *c, int threads,
                         char *message, size_t capacity) {
    try {
        Key key{m, n, k, a_row, a_column, b_row, b_column, bf16 != 0, bias != nullptr};
        const dnnl::matmul &matmul = matmul_for(key);
        auto &engine = primitives().engine;
        auto type = operand_type(bf16);
        memory a_memory({{m, k}, type, {a_row, a_column}}, engine, const_cast<void *>(a));
        memory b_memory({{k, n}, type, {b_row, b_column}}, engine, const_cast<void *>(b));
        memory c_memory({{m, n}, memory::data_type::f32, {n, 1}}, engine, c);
        std::unordered_map<int, memory> arguments{
            {DNNL_ARG_SRC, a_memory}, {DNNL_ARG_WEIGHTS, b_memory}, {DNNL_ARG_DST, c_memory}};
        if (bias) {
            arguments.emplace(DNNL_ARG_BIAS,
                              memory({{1, n}, memory::data_type::f32, {n, 1}}, engine,
                                     const_cast<float *>(bias)));
        }
        // OpenMP's thread count is per calling thread; set it for the thread that calls.
        omp_set_num_threads(threads);
        dnnl::stream stream(engine);
        matmul.execute(stream, arguments);
        stream.wait();
        return 0;
    } catch (const std::exception &error) {
        return failure(error, message, capacity);
    }
}

// The instruction set oneDNN dispatches to on this CPU (dnnl_cpu_isa_t).
int alpaca_onednn_cpu_isa() { return static_cast<int>(dnnl_get_effective_cpu_isa()); }
}
