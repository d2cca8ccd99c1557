// The SIMT emulator's runtime: runs a kernel launch on the CPU.
//
// Blocks are handed to worker OS threads; on a worker the block's CUDA threads are fibers with
// their own stacks, switched by a hand-written context switch (a few ns; glibc's swapcontext makes
// a syscall per switch and was 6x slower in the prototype). A fiber runs until it reaches a
// barrier, a warp collective or its end, and the scheduler then picks the next ready fiber:
//   schedule 0 (round robin) keeps warps in step, like the hardware usually does;
//   schedule 1 (lowest ready thread first) lets low warps run ahead, which exposes missing
//   __syncthreads that round robin hides.
// A barrier or collective that can never complete is reported as a launch error, not a hang.
// Dynamic shared memory is poisoned (0xff bytes: NaN for f32 and bf16) at every block start, and
// cp.async destinations are poisoned at issue and written at wait time.
#include "emu.h"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace admix_emu {

thread_local uint3 tls_thread_idx;
thread_local uint3 tls_block_idx;
thread_local dim3 tls_block_dim;
thread_local dim3 tls_grid_dim;
thread_local unsigned char* tls_dynamic_smem;

// ---- context switch: save callee-saved registers on the current stack, swap stack pointers ----
extern "C" void admix_emu_switch(void** save_sp, void* new_sp);
#if defined(__x86_64__)
asm(R"(
.text
.globl admix_emu_switch
.hidden admix_emu_switch
.type admix_emu_switch,@function
admix_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size admix_emu_switch, .-admix_emu_switch
)");
#else
#error "the SIMT emulator's context switch is written for x86-64"
#endif

namespace {

constexpr size_t kStackBytes = 64 * 1024;
constexpr size_t kGuardBytes = 4096;
constexpr int kGroupsPerWarp = 8;

enum class State { Ready, AtBarrier, InCollective, Exited };

struct PendingCopy {
    unsigned char* dst;
    unsigned char data[16];
    long group;  // -1 until committed
};

struct Group {
    bool used = false, done = false;
    unsigned mask = 0, arrived = 0, readers = 0;
    CollectiveFn fn = nullptr;
    LaneSlot slots[32];
};

struct Fiber {
    void* sp = nullptr;
    uint3 tid{};
    unsigned linear = 0;
    State state = State::Ready;
    Group* group = nullptr;
    std::vector<PendingCopy> copies;
    long next_group = 0;
};

struct Warp {
    Group groups[kGroupsPerWarp];
};

// One worker's block in flight.
struct Block {
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    unsigned live = 0, barrier_arrived = 0;
    void* sched_sp = nullptr;
    Fiber* current = nullptr;
    int schedule = 0;
    void (*entry)(void**) = nullptr;
    void** args = nullptr;
    bool failed = false;
    std::string error;
};

thread_local Block* tls_block;

// Stacks are reused across launches (fresh mappings would cost a page fault per fiber).
std::mutex g_stack_mutex;
std::vector<std::pair<unsigned char*, size_t>> g_stack_pool;

unsigned char* acquire_stacks(size_t count, size_t* bytes) {
    size_t need = count * (kStackBytes + kGuardBytes);
    {
        std::lock_guard<std::mutex> lock(g_stack_mutex);
        for (size_t i = 0; i < g_stack_pool.size(); i++) {
            if (g_stack_pool[i].second >= need) {
                auto r = g_stack_pool[i];
                g_stack_pool.erase(g_stack_pool.begin() + i);
                *bytes = r.second;
                return r.first;
            }
        }
    }
    void* p = mmap(nullptr, need, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    auto* base = static_cast<unsigned char*>(p);
    for (size_t i = 0; i < count; i++) mprotect(base + i * (kStackBytes + kGuardBytes), kGuardBytes, PROT_NONE);
    *bytes = need;
    return base;
}

void release_stacks(unsigned char* base, size_t bytes) {
    std::lock_guard<std::mutex> lock(g_stack_mutex);
    g_stack_pool.emplace_back(base, bytes);
}

void yield_to_scheduler() {
    Block* b = tls_block;
    admix_emu_switch(&b->current->sp, b->sched_sp);
}

void release_barrier(Block* b) {
    for (auto& f : b->fibers)
        if (f.state == State::AtBarrier) f.state = State::Ready;
    b->barrier_arrived = 0;
}

void fiber_main() {
    Block* b = tls_block;
    b->entry(b->args);
    Fiber* f = b->current;
    f->state = State::Exited;
    f->copies.clear();
    b->live--;
    if (b->barrier_arrived > 0 && b->barrier_arrived == b->live) release_barrier(b);
    yield_to_scheduler();
    std::abort();  // an exited fiber is never resumed
}

void* prepare_stack(unsigned char* stack_base) {
    // [r15 r14 r13 r12 rbx rbp | return address = fiber_main | fake return address of fiber_main]
    auto top = reinterpret_cast<uintptr_t>(stack_base + kGuardBytes + kStackBytes) & ~uintptr_t(15);
    auto* slots = reinterpret_cast<void**>(top - 8 * sizeof(void*));
    for (int i = 0; i < 6; i++) slots[i] = nullptr;
    slots[6] = reinterpret_cast<void*>(&fiber_main);
    slots[7] = nullptr;
    return slots;
}

std::string where(const Fiber& f) {
    char buf[160];
    snprintf(buf, sizeof buf, "block (%u,%u,%u) thread (%u,%u,%u)", tls_block_idx.x, tls_block_idx.y,
             tls_block_idx.z, f.tid.x, f.tid.y, f.tid.z);
    return buf;
}

// Runs one block to completion; false on a kernel error (message in b->error).
bool run_block(Block* b, uint3 block_idx, size_t smem) {
    tls_block_idx = block_idx;
    if (smem) memset(tls_dynamic_smem, 0xff, smem);
    b->live = (unsigned)b->fibers.size();
    b->barrier_arrived = 0;
    for (auto& w : b->warps)
        for (auto& g : w.groups) g = Group{};
    const size_t n = b->fibers.size();
    size_t cursor = n - 1;
    while (true) {
        size_t pick = n;
        if (b->schedule == 0) {
            for (size_t k = 1; k <= n; k++) {
                size_t i = (cursor + k) % n;
                if (b->fibers[i].state == State::Ready) {
                    pick = i;
                    break;
                }
            }
        } else {
            for (size_t i = 0; i < n; i++)
                if (b->fibers[i].state == State::Ready) {
                    pick = i;
                    break;
                }
        }
        if (pick == n) {
            if (b->live == 0) return true;
            for (auto& f : b->fibers) {
                char buf[256];
                if (f.state == State::AtBarrier) {
                    snprintf(buf, sizeof buf, "deadlock: %s waits at __syncthreads with %u of %u live threads arrived",
                             where(f).c_str(), b->barrier_arrived, b->live);
                } else if (f.state == State::InCollective) {
                    snprintf(buf, sizeof buf,
                             "deadlock: %s (warp %u lane %u) waits in a warp collective with mask 0x%08x; "
                             "arrived 0x%08x",
                             where(f).c_str(), f.linear / 32, f.linear % 32, f.group->mask, f.group->arrived);
                } else {
                    continue;
                }
                b->error = buf;
                return false;
            }
            b->error = "deadlock (no ready thread)";
            return false;
        }
        cursor = pick;
        Fiber& f = b->fibers[pick];
        b->current = &f;
        tls_thread_idx = f.tid;
        admix_emu_switch(&b->sched_sp, f.sp);
        if (b->failed) return false;
    }
}

std::mutex g_error_mutex;

}  // namespace

void fail(const char* fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    Block* b = tls_block;
    b->failed = true;
    b->error = where(*b->current) + ": " + msg;
    yield_to_scheduler();
    std::abort();  // a failed fiber is never resumed
}

unsigned lane_id() { return tls_block->current->linear % 32; }

void syncthreads() {
    Block* b = tls_block;
    if (++b->barrier_arrived == b->live) {
        release_barrier(b);
        return;
    }
    b->current->state = State::AtBarrier;
    yield_to_scheduler();
}

void collective(CollectiveFn fn, unsigned mask, LaneSlot& mine) {
    Block* b = tls_block;
    Fiber* f = b->current;
    const unsigned lane = f->linear % 32, bit = 1u << lane;
    if (!(mask & bit)) fail("warp collective with mask 0x%08x called by lane %u, which the mask does not name", mask, lane);
    Warp& w = b->warps[f->linear / 32];
    Group* g = nullptr;
    for (auto& c : w.groups)
        if (c.used && !c.done && c.mask == mask) g = &c;
    if (!g) {
        for (auto& c : w.groups)
            if (!c.used) {
                g = &c;
                break;
            }
        if (!g) fail("more than %d warp collectives in flight in one warp", kGroupsPerWarp);
        *g = Group{};
        g->used = true;
        g->mask = mask;
        g->fn = fn;
    } else if (g->fn != fn) {
        fail("lanes of warp %u meet at mask 0x%08x in different collectives", f->linear / 32, mask);
    }
    g->slots[lane] = mine;
    g->arrived |= bit;
    if (g->arrived == mask) {
        fn(g->slots, mask);
        g->done = true;
        g->readers = (unsigned)__builtin_popcount(mask);
        const unsigned base = f->linear & ~31u;
        for (unsigned l = 0; l < 32; l++)
            if ((mask >> l & 1) && l != lane) b->fibers[base + l].state = State::Ready;
    } else {
        f->state = State::InCollective;
        f->group = g;
        yield_to_scheduler();
    }
    memcpy(mine.out, g->slots[lane].out, sizeof mine.out);
    if (--g->readers == 0) g->used = false;
}

namespace {
void shfl_fn(LaneSlot* s, unsigned mask) {
    for (unsigned l = 0; l < 32; l++) {
        if (!(mask >> l & 1)) continue;
        const int arg = s[l].arg;
        const int width = (int)s[l].in[1];
        const auto kind = (ShflKind)s[l].in[2];
        const int seg = (int)l & ~(width - 1), end = seg + width;
        int src = (int)l;
        switch (kind) {
            case SHFL_IDX: src = seg + (arg & (width - 1)); break;
            case SHFL_UP: src = (int)l - arg >= seg ? (int)l - arg : (int)l; break;
            case SHFL_DOWN: src = (int)l + arg < end ? (int)l + arg : (int)l; break;
            case SHFL_XOR: src = ((int)l ^ arg) < end ? ((int)l ^ arg) : (int)l; break;
        }
        if (!(mask >> src & 1)) fail("lane %u shuffles from lane %d, which is not in mask 0x%08x", l, src, mask);
        s[l].out[0] = s[src].in[0];
    }
}
void ballot_fn(LaneSlot* s, unsigned mask) {
    unsigned bits = 0;
    for (unsigned l = 0; l < 32; l++)
        if ((mask >> l & 1) && s[l].in[0]) bits |= 1u << l;
    for (unsigned l = 0; l < 32; l++) s[l].out[0] = bits;
}
void noop_fn(LaneSlot*, unsigned) {}
}  // namespace

uint32_t shfl(unsigned mask, uint32_t v, int arg, int width, ShflKind kind) {
    if (width < 1 || width > 32 || (width & (width - 1))) fail("shuffle width %d is not a power of two <= 32", width);
    LaneSlot s;
    s.in[0] = v;
    s.in[1] = (uint32_t)width;
    s.in[2] = (uint32_t)kind;
    s.arg = arg;
    collective(shfl_fn, mask, s);
    return s.out[0];
}

unsigned ballot(unsigned mask, bool pred) {
    LaneSlot s;
    s.in[0] = pred;
    collective(ballot_fn, mask, s);
    return s.out[0];
}

void syncwarp(unsigned mask) {
    LaneSlot s;
    collective(noop_fn, mask, s);
}

void cp_async_issue(void* dst, const void* src, int src_bytes) {
    if (reinterpret_cast<uintptr_t>(dst) % 16) fail("cp.async destination %p is not 16-byte aligned", dst);
    if (reinterpret_cast<uintptr_t>(src) % 16) fail("cp.async source %p is not 16-byte aligned", src);
    if (src_bytes < 0 || src_bytes > 16) fail("cp.async src-size %d is outside 0..16", src_bytes);
    PendingCopy c;
    c.dst = static_cast<unsigned char*>(dst);
    memset(c.data, 0, 16);
    if (src_bytes) memcpy(c.data, src, (size_t)src_bytes);
    c.group = -1;
    memset(dst, 0xff, 16);
    tls_block->current->copies.push_back(c);
}

void cp_async_commit() {
    Fiber* f = tls_block->current;
    for (auto& c : f->copies)
        if (c.group < 0) c.group = f->next_group;
    f->next_group++;
}

void cp_async_wait(int n) {
    Fiber* f = tls_block->current;
    const long limit = f->next_group - n;  // groups older than the n most recent complete
    size_t keep = 0;
    for (size_t i = 0; i < f->copies.size(); i++) {
        auto& c = f->copies[i];
        if (c.group >= 0 && c.group < limit)
            memcpy(c.dst, c.data, 16);
        else
            f->copies[keep++] = c;
    }
    f->copies.resize(keep);
}

}  // namespace admix_emu

using namespace admix_emu;

// Runs `entry(args)` over grid × block. Returns 0, or 1 with a message in `err`.
extern "C" int admix_emu_launch(void (*entry)(void**), void** args, const unsigned* grid, const unsigned* block,
                                size_t smem, int schedule, int workers, char* err, size_t err_len) {
    auto report = [&](const std::string& m) {
        snprintf(err, err_len, "%s", m.c_str());
        return 1;
    };
    const size_t threads = (size_t)block[0] * block[1] * block[2];
    const size_t blocks = (size_t)grid[0] * grid[1] * grid[2];
    if (threads == 0 || threads > 1024) return report("invalid block size: " + std::to_string(threads) + " threads");
    if (blocks == 0) return report("invalid grid: zero blocks");
    if (grid[1] > 65535 || grid[2] > 65535) return report("grid y/z beyond 65535");
    if (smem > 227 * 1024) return report("dynamic shared memory " + std::to_string(smem) + " bytes > 227 KiB");
    const size_t nworkers = std::max<size_t>(1, std::min<size_t>((size_t)std::max(workers, 1), blocks));

    std::atomic<size_t> next{0};
    std::atomic<bool> failed{false};
    std::string first_error;

    auto work = [&]() {
        Block b;
        b.schedule = schedule;
        b.entry = entry;
        b.args = args;
        b.fibers.resize(threads);
        b.warps.resize((threads + 31) / 32);
        size_t stack_bytes = 0;
        unsigned char* stacks = acquire_stacks(threads, &stack_bytes);
        if (!stacks) {
            std::lock_guard<std::mutex> lock(g_error_mutex);
            if (!failed.exchange(true)) first_error = "cannot map fiber stacks";
            return;
        }
        unsigned char* smem_buf = smem ? static_cast<unsigned char*>(aligned_alloc(128, (smem + 127) / 128 * 128)) : nullptr;
        tls_block = &b;
        tls_dynamic_smem = smem_buf;
        tls_block_dim = dim3{block[0], block[1], block[2]};
        tls_grid_dim = dim3{grid[0], grid[1], grid[2]};
        while (!failed.load(std::memory_order_relaxed)) {
            const size_t id = next.fetch_add(1);
            if (id >= blocks) break;
            for (size_t t = 0; t < threads; t++) {
                Fiber& f = b.fibers[t];
                f.linear = (unsigned)t;
                f.tid = uint3{(unsigned)(t % block[0]), (unsigned)(t / block[0] % block[1]),
                              (unsigned)(t / ((size_t)block[0] * block[1]))};
                f.state = State::Ready;
                f.group = nullptr;
                f.copies.clear();
                f.next_group = 0;
                f.sp = prepare_stack(stacks + t * (kStackBytes + kGuardBytes));
            }
            const uint3 bid{(unsigned)(id % grid[0]), (unsigned)(id / grid[0] % grid[1]),
                            (unsigned)(id / ((size_t)grid[0] * grid[1]))};
            if (!run_block(&b, bid, smem)) {
                std::lock_guard<std::mutex> lock(g_error_mutex);
                if (!failed.exchange(true)) first_error = b.error;
                break;
            }
        }
        tls_block = nullptr;
        free(smem_buf);
        release_stacks(stacks, stack_bytes);
    };

    if (nworkers == 1) {
        work();
    } else {
        std::vector<std::thread> pool;
        for (size_t i = 0; i < nworkers; i++) pool.emplace_back(work);
        for (auto& t : pool) t.join();
    }
    if (failed) return report(first_error);
    return 0;
}
