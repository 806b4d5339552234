// 2-D convolution (forward, input gradient, weight gradient) for XLA on CPU,
// computed by oneDNN, the library PyTorch uses for its CPU convolutions.
//
// Why: XLA CPU's own convolution kernels run 2-7x slower than oneDNN's at the
// channel counts of CIFAR ResNets, the weight gradient worst
// (benchmarks/FINDINGS.md). These handlers are registered as XLA FFI targets
// by cnn/kernels/onednn.py, which pairs them into a differentiable function.
//
// Threads: the batch is cut into chunks that run single-threaded oneDNN
// primitives on XLA's own thread pool (the caller takes chunks too), instead
// of oneDNN's OpenMP team: XLA's threads and an OpenMP team on the same cores
// wake and spin against each other between operations. Weight gradients are
// summed over the chunks in a fixed order, so results do not depend on which
// thread ran which chunk.
//
// Layouts: activations NHWC, kernels HWIO (Flax's), float32 or bfloat16 (all
// three operands alike; bfloat16 weight gradients are summed in float32), no
// dilation, no groups. Attributes: stride_h, stride_w, pad_top, pad_bottom, pad_left,
// pad_right (int64). Primitives are built once per shape and cached.

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dnnl::memory;
using Tag = memory::format_tag;

enum class Op { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

struct Geometry {
  memory::data_type dt;  // of every operand
  int64_t n, h, w, c;  // input
  int64_t oh, ow, o;   // output
  int64_t kh, kw;      // kernel
  int64_t sh, sw, pt, pb, pl, pr;

  auto key(Op op) const {
    return std::make_tuple(static_cast<int>(op), static_cast<int>(dt), n, h,
                           w, c, oh, ow, o, kh, kw, sh, sw, pt, pb, pl, pr);
  }
  memory::desc src() const {
    return memory::desc({n, c, h, w}, dt, Tag::nhwc);
  }
  memory::desc dst() const {
    return memory::desc({n, o, oh, ow}, dt, Tag::nhwc);
  }
  memory::desc weights(Tag tag) const { return weights(tag, dt); }
  memory::desc weights(Tag tag, memory::data_type type) const {
    return memory::desc({o, c, kh, kw}, type, tag);
  }
  int64_t element_bytes() const {
    return dt == memory::data_type::bf16 ? 2 : 4;
  }
  memory::dims strides() const { return {sh, sw}; }
  memory::dims pad_l() const { return {pt, pl}; }
  memory::dims pad_r() const { return {pb, pr}; }
  int64_t src_image() const { return h * w * c * element_bytes(); }  // bytes
  int64_t dst_image() const { return oh * ow * o * element_bytes(); }
};

// One cached convolution for one chunk size: the primitive, its scratchpad
// size, and the reorder between HWIO and the (blocked) weight layout it wants:
// HWIO -> blocked for the kernel operand, blocked float32 -> HWIO float32 for
// a weight gradient. Chunk sizes may differ, and so may their layouts.
struct Plan {
  dnnl::primitive conv;
  memory::desc weights_md;
  size_t scratchpad_bytes = 0;
  bool reorder_weights = false;
  dnnl::primitive weights_reorder;
  dnnl::primitive sum_to_operand_type;  // bf16 weight gradients: HWIO f32->bf16
};

struct Runtime {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  std::mutex mutex;  // guards `plans`
  std::map<decltype(Geometry{}.key(Op::kForward)), std::unique_ptr<Plan>> plans;
};

Runtime& runtime() {
  static Runtime* rt = new Runtime();
  return *rt;
}

// oneDNN (an OpenMP build) runs single-threaded in the calling thread.
void use_one_thread() {
  if (omp_get_max_threads() != 1) omp_set_num_threads(1);
}

const Plan& plan_for(const Geometry& g, Op op) {
  Runtime& rt = runtime();
  std::lock_guard<std::mutex> lock(rt.mutex);
  auto& slot = rt.plans[g.key(op)];
  if (slot) return *slot;
  use_one_thread();  // primitives are tuned for the thread count at creation
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto plan = std::make_unique<Plan>();
  dnnl::convolution_forward::primitive_desc fwd(
      rt.engine, dnnl::prop_kind::forward_training,
      dnnl::algorithm::convolution_direct, g.src(), g.weights(Tag::any),
      g.dst(), g.strides(), g.pad_l(), g.pad_r(), attr);
  if (op == Op::kForward) {
    plan->conv = dnnl::convolution_forward(fwd);
    plan->weights_md = fwd.weights_desc();
    plan->scratchpad_bytes = fwd.scratchpad_desc().get_size();
  } else if (op == Op::kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc pd(
        rt.engine, dnnl::algorithm::convolution_direct, g.src(),
        g.weights(Tag::any), g.dst(), g.strides(), g.pad_l(), g.pad_r(), fwd,
        attr);
    plan->conv = dnnl::convolution_backward_data(pd);
    plan->weights_md = pd.weights_desc();
    plan->scratchpad_bytes = pd.scratchpad_desc().get_size();
  } else {
    // Partial sums over chunks in float32, whatever the operands' type.
    dnnl::convolution_backward_weights::primitive_desc pd(
        rt.engine, dnnl::algorithm::convolution_direct, g.src(),
        g.weights(Tag::any, memory::data_type::f32), g.dst(), g.strides(),
        g.pad_l(), g.pad_r(), fwd, attr);
    plan->conv = dnnl::convolution_backward_weights(pd);
    plan->weights_md = pd.diff_weights_desc();
    plan->scratchpad_bytes = pd.scratchpad_desc().get_size();
  }
  const memory::desc hwio =
      op == Op::kBackwardWeights
          ? g.weights(Tag::hwio, memory::data_type::f32)
          : g.weights(Tag::hwio);
  plan->reorder_weights = plan->weights_md != hwio;
  if (plan->reorder_weights) {
    plan->weights_reorder =
        op == Op::kBackwardWeights
            ? dnnl::reorder(dnnl::reorder::primitive_desc(
                  rt.engine, plan->weights_md, rt.engine, hwio))
            : dnnl::reorder(dnnl::reorder::primitive_desc(
                  rt.engine, hwio, rt.engine, plan->weights_md));
  }
  if (op == Op::kBackwardWeights && g.dt != memory::data_type::f32) {
    plan->sum_to_operand_type = dnnl::reorder(dnnl::reorder::primitive_desc(
        rt.engine, hwio, rt.engine, g.weights(Tag::hwio)));
  }
  slot = std::move(plan);
  return *slot;
}

// Runs `chunk(i)` for i in [0, count) on the caller and on up to `helpers`
// tasks of XLA's thread pool. A task that starts after every chunk is taken
// returns at once, so the caller never waits for a task that has not begun:
// no deadlock when the pool is busy or smaller than asked for.
template <typename F>
void run_chunks(ffi::ThreadPool& pool, int count, int helpers, F chunk) {
  struct State {
    std::atomic<int> next{0};
    int count = 0;
    int running = 0;  // chunks started and not finished, under `mutex`
    std::mutex mutex;
    std::condition_variable finished;
  };
  auto state = std::make_shared<State>();
  state->count = count;
  auto work = [state, chunk]() {
    for (;;) {
      {
        std::lock_guard<std::mutex> lock(state->mutex);
        if (state->next.load() >= state->count) return;
        ++state->running;
      }
      int i = state->next.fetch_add(1);
      if (i < state->count) chunk(i);
      std::lock_guard<std::mutex> lock(state->mutex);
      if (--state->running == 0) state->finished.notify_all();
    }
  };
  for (int t = 0; t < helpers; ++t) {
    auto task = work;
    pool.Schedule(std::move(task));
  }
  work();
  std::unique_lock<std::mutex> lock(state->mutex);
  state->finished.wait(lock, [&] {
    return state->running == 0 && state->next.load() >= state->count;
  });
}

std::vector<char>& thread_scratch(size_t bytes) {
  thread_local std::vector<char> scratch;
  if (scratch.size() < bytes) scratch.resize(bytes);
  return scratch;
}

// Runs `primitive` single-threaded in this thread, with `scratch_bytes` of
// this thread's scratchpad.
void execute(const dnnl::primitive& primitive,
             std::unordered_map<int, memory> args, size_t scratch_bytes = 0) {
  Runtime& rt = runtime();
  use_one_thread();
  dnnl::stream stream(rt.engine);
  if (scratch_bytes > 0) {
    auto& scratch = thread_scratch(scratch_bytes);
    args.insert({DNNL_ARG_SCRATCHPAD,
                 memory(memory::desc({static_cast<int64_t>(scratch_bytes)},
                                     memory::data_type::u8, Tag::x),
                        rt.engine, scratch.data())});
  }
  primitive.execute(stream, args);
  stream.wait();
}

ffi::Error run(ffi::ThreadPool& pool, Op op, const Geometry& g, void* src_ptr,
               void* weights, void* dst_ptr) {
  char* src = static_cast<char*>(src_ptr);
  char* dst = static_cast<char*>(dst_ptr);
  try {
    Runtime& rt = runtime();
    const int64_t threads = std::max<int64_t>(1, pool.num_threads());
    // Two chunks per thread: a late helper leaves less for the caller alone.
    const int64_t per_chunk = std::max<int64_t>(
        1, (g.n + 2 * threads - 1) / (2 * threads));
    const int count = static_cast<int>((g.n + per_chunk - 1) / per_chunk);
    auto chunk_geometry = [&](int i) {
      Geometry c = g;
      c.n = std::min(per_chunk, g.n - i * per_chunk);
      return c;
    };
    // Plans for both chunk sizes, built here (not on the pool's threads).
    const Plan* plans[2] = {&plan_for(chunk_geometry(0), op),
                            &plan_for(chunk_geometry(count - 1), op)};
    auto which = [&](int i) { return i == count - 1 ? 1 : 0; };
    // Chunk i's images of the input side and of the output side.
    auto src_of = [&](int i) {
      return memory(chunk_geometry(i).src(), rt.engine,
                    src + i * per_chunk * g.src_image());
    };
    auto dst_of = [&](int i) {
      return memory(chunk_geometry(i).dst(), rt.engine,
                    dst + i * per_chunk * g.dst_image());
    };
    memory hwio_mem(g.weights(Tag::hwio), rt.engine, weights);

    if (op != Op::kBackwardWeights) {
      // The kernel in each plan's layout, shared read-only by its chunks.
      std::vector<char> blocked[2];
      memory weights_mem[2] = {hwio_mem, hwio_mem};
      for (int k = 0; k < 2; ++k) {
        const Plan& plan = *plans[k];
        if (k == 1 && plan.weights_md == plans[0]->weights_md) {
          weights_mem[1] = weights_mem[0];
        } else if (plan.reorder_weights) {
          blocked[k].resize(plan.weights_md.get_size());
          weights_mem[k] = memory(plan.weights_md, rt.engine,
                                  blocked[k].data());
          execute(plan.weights_reorder,
                  {{DNNL_ARG_FROM, hwio_mem}, {DNNL_ARG_TO, weights_mem[k]}});
        }
      }
      const int src_arg = op == Op::kForward ? DNNL_ARG_SRC : DNNL_ARG_DIFF_SRC;
      const int dst_arg = op == Op::kForward ? DNNL_ARG_DST : DNNL_ARG_DIFF_DST;
      run_chunks(pool, count, static_cast<int>(threads) - 1, [&](int i) {
        const Plan& plan = *plans[which(i)];
        execute(plan.conv,
                {{src_arg, src_of(i)},
                 {DNNL_ARG_WEIGHTS, weights_mem[which(i)]},
                 {dst_arg, dst_of(i)}},
                plan.scratchpad_bytes);
      });
      return ffi::Error::Success();
    }

    // Weight gradient: each chunk's float32 partial sum, converted to HWIO in
    // its own slot, then the slots added in chunk order.
    const memory::desc hwio_f32 = g.weights(Tag::hwio, memory::data_type::f32);
    const size_t floats = hwio_f32.get_size() / sizeof(float);
    std::vector<float> partials(floats * count);
    run_chunks(pool, count, static_cast<int>(threads) - 1, [&](int i) {
      const Plan& plan = *plans[which(i)];
      memory slot(hwio_f32, rt.engine, partials.data() + i * floats);
      std::vector<char> blocked;
      memory diff_weights = slot;
      if (plan.reorder_weights) {
        blocked.resize(plan.weights_md.get_size());
        diff_weights = memory(plan.weights_md, rt.engine, blocked.data());
      }
      execute(plan.conv,
              {{DNNL_ARG_SRC, src_of(i)},
               {DNNL_ARG_DIFF_WEIGHTS, diff_weights},
               {DNNL_ARG_DIFF_DST, dst_of(i)}},
              plan.scratchpad_bytes);
      if (plan.reorder_weights) {
        execute(plan.weights_reorder,
                {{DNNL_ARG_FROM, diff_weights}, {DNNL_ARG_TO, slot}});
      }
    });
    for (int i = 1; i < count; ++i) {
      const float* p = partials.data() + i * floats;
      for (size_t j = 0; j < floats; ++j) partials[j] += p[j];
    }
    if (g.dt == memory::data_type::f32) {
      std::copy(partials.begin(), partials.begin() + floats,
                static_cast<float*>(weights));
    } else {  // float32 -> the operands' type (bfloat16), rounding as oneDNN.
      execute(plans[0]->sum_to_operand_type,
              {{DNNL_ARG_FROM, memory(hwio_f32, rt.engine, partials.data())},
               {DNNL_ARG_TO, hwio_mem}});
    }
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal,
                      std::string("oneDNN convolution failed: ") + e.what());
  }
  return ffi::Error::Success();
}

// image: [n, h, w, c]; kernel: [kh, kw, c, o]; out: [n, oh, ow, o].
ffi::Error geometry(ffi::AnyBuffer image, ffi::AnyBuffer kernel,
                    ffi::AnyBuffer out, int64_t sh, int64_t sw, int64_t pt,
                    int64_t pb, int64_t pl, int64_t pr, Geometry* g) {
  const ffi::DataType type = image.element_type();
  if (kernel.element_type() != type || out.element_type() != type ||
      (type != ffi::DataType::F32 && type != ffi::DataType::BF16)) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "oneDNN convolution: operands must all be float32 or "
                      "all bfloat16");
  }
  auto i = image.dimensions(), k = kernel.dimensions(), o = out.dimensions();
  if (i.size() != 4 || k.size() != 4 || o.size() != 4) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "oneDNN convolution: operands must have rank 4");
  }
  *g = Geometry{type == ffi::DataType::BF16 ? memory::data_type::bf16
                                            : memory::data_type::f32,
                i[0], i[1], i[2], i[3], o[1], o[2], o[3], k[0], k[1],
                sh, sw, pt, pb, pl, pr};
  return ffi::Error::Success();
}

ffi::Error ConvForward(ffi::ThreadPool pool, ffi::AnyBuffer x,
                       ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y,
                       int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                       int64_t pl, int64_t pr) {
  Geometry g;
  if (auto e = geometry(x, w, *y, sh, sw, pt, pb, pl, pr, &g); e.failure()) {
    return e;
  }
  return run(pool, Op::kForward, g, x.untyped_data(), w.untyped_data(),
             y->untyped_data());
}

ffi::Error ConvBackwardData(ffi::ThreadPool pool, ffi::AnyBuffer dy,
                            ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx,
                            int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                            int64_t pl, int64_t pr) {
  Geometry g;
  if (auto e = geometry(*dx, w, dy, sh, sw, pt, pb, pl, pr, &g); e.failure()) {
    return e;
  }
  return run(pool, Op::kBackwardData, g, dx->untyped_data(), w.untyped_data(),
             dy.untyped_data());
}

ffi::Error ConvBackwardWeights(ffi::ThreadPool pool, ffi::AnyBuffer x,
                               ffi::AnyBuffer dy,
                               ffi::Result<ffi::AnyBuffer> dw, int64_t sh,
                               int64_t sw, int64_t pt, int64_t pb, int64_t pl,
                               int64_t pr) {
  Geometry g;
  if (auto e = geometry(x, *dw, dy, sh, sw, pt, pb, pl, pr, &g); e.failure()) {
    return e;
  }
  return run(pool, Op::kBackwardWeights, g, x.untyped_data(),
             dw->untyped_data(), dy.untyped_data());
}

auto binding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::AnyBuffer>()
      .Arg<ffi::AnyBuffer>()
      .Ret<ffi::AnyBuffer>()
      .Attr<int64_t>("stride_h")
      .Attr<int64_t>("stride_w")
      .Attr<int64_t>("pad_top")
      .Attr<int64_t>("pad_bottom")
      .Attr<int64_t>("pad_left")
      .Attr<int64_t>("pad_right");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(cnn_onednn_conv_forward, ConvForward, binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(cnn_onednn_conv_backward_data, ConvBackwardData,
                              binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(cnn_onednn_conv_backward_weights,
                              ConvBackwardWeights, binding());
