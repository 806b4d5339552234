// 2-D convolution (forward, input gradient, weight gradient) for XLA on CPU,
// computed by oneDNN, the library PyTorch uses for its CPU convolutions.
//
// Why: XLA CPU's own convolution kernels run 2-7x slower than oneDNN's at the
// channel counts of CIFAR ResNets, the weight gradient worst
// (benchmarks/FINDINGS.md). These handlers are registered as XLA FFI targets
// by cnn/kernels/onednn.py, which pairs them into a differentiable function.
//
// Layouts: activations NHWC, kernels HWIO (Flax's), float32, no dilation, no
// groups. Attributes: stride_h, stride_w, pad_top, pad_bottom, pad_left,
// pad_right (int64). Primitives are built once per shape and cached.

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
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
  int64_t n, h, w, c;      // input
  int64_t oh, ow, o;       // output
  int64_t kh, kw;          // kernel
  int64_t sh, sw, pt, pb, pl, pr;

  auto key(Op op) const {
    return std::make_tuple(static_cast<int>(op), n, h, w, c, oh, ow, o, kh, kw,
                           sh, sw, pt, pb, pl, pr);
  }
  memory::desc src(Tag tag = Tag::nhwc) const {
    return memory::desc({n, c, h, w}, memory::data_type::f32, tag);
  }
  memory::desc dst(Tag tag = Tag::nhwc) const {
    return memory::desc({n, o, oh, ow}, memory::data_type::f32, tag);
  }
  memory::desc weights(Tag tag) const {
    return memory::desc({o, c, kh, kw}, memory::data_type::f32, tag);
  }
  memory::dims strides() const { return {sh, sw}; }
  memory::dims pad_l() const { return {pt, pl}; }
  memory::dims pad_r() const { return {pb, pr}; }

  dnnl::convolution_forward::primitive_desc forward_pd(
      const dnnl::engine& eng) const {
    return dnnl::convolution_forward::primitive_desc(
        eng, dnnl::prop_kind::forward_training,
        dnnl::algorithm::convolution_direct, src(), weights(Tag::any), dst(),
        strides(), pad_l(), pad_r());
  }
};

// One cached convolution: the primitive, and for kernels kept by oneDNN in a
// blocked layout, the reorder between that layout and HWIO.
struct Plan {
  dnnl::primitive conv;
  memory::desc weights_md;           // the layout the primitive wants
  bool reorder_weights = false;
  dnnl::primitive weights_reorder;   // HWIO -> blocked (fwd, bwd data) or back
  std::vector<float> weights_buffer; // blocked copy
};

struct Runtime {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  std::mutex mutex;  // one convolution at a time: each uses every core
  std::map<decltype(Geometry{}.key(Op::kForward)), std::unique_ptr<Plan>> plans;
};

Runtime& runtime() {
  static Runtime* rt = new Runtime();
  return *rt;
}

Plan& plan_for(Runtime& rt, const Geometry& g, Op op) {
  auto& slot = rt.plans[g.key(op)];
  if (slot) return *slot;
  auto plan = std::make_unique<Plan>();
  auto fwd = g.forward_pd(rt.engine);
  const memory::desc hwio = g.weights(Tag::hwio);
  if (op == Op::kForward) {
    plan->conv = dnnl::convolution_forward(fwd);
    plan->weights_md = fwd.weights_desc();
  } else if (op == Op::kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc pd(
        rt.engine, dnnl::algorithm::convolution_direct, g.src(),
        g.weights(Tag::any), g.dst(), g.strides(), g.pad_l(), g.pad_r(), fwd);
    plan->conv = dnnl::convolution_backward_data(pd);
    plan->weights_md = pd.weights_desc();
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(
        rt.engine, dnnl::algorithm::convolution_direct, g.src(),
        g.weights(Tag::any), g.dst(), g.strides(), g.pad_l(), g.pad_r(), fwd);
    plan->conv = dnnl::convolution_backward_weights(pd);
    plan->weights_md = pd.diff_weights_desc();
  }
  plan->reorder_weights = plan->weights_md != hwio;
  if (plan->reorder_weights) {
    plan->weights_buffer.resize(plan->weights_md.get_size() / sizeof(float));
    plan->weights_reorder =
        op == Op::kBackwardWeights
            ? dnnl::reorder(dnnl::reorder::primitive_desc(
                  rt.engine, plan->weights_md, rt.engine, hwio))
            : dnnl::reorder(dnnl::reorder::primitive_desc(
                  rt.engine, hwio, rt.engine, plan->weights_md));
  }
  slot = std::move(plan);
  return *slot;
}

ffi::Error run(Op op, const Geometry& g, float* src, float* weights,
               float* dst) {
  try {
    Runtime& rt = runtime();
    std::lock_guard<std::mutex> lock(rt.mutex);
    Plan& plan = plan_for(rt, g, op);
    memory src_mem(g.src(), rt.engine, src);
    memory dst_mem(g.dst(), rt.engine, dst);
    memory hwio_mem(g.weights(Tag::hwio), rt.engine, weights);
    memory weights_mem = hwio_mem;
    if (plan.reorder_weights) {
      weights_mem = memory(plan.weights_md, rt.engine,
                           plan.weights_buffer.data());
      if (op != Op::kBackwardWeights) {
        plan.weights_reorder.execute(
            rt.stream, {{DNNL_ARG_FROM, hwio_mem}, {DNNL_ARG_TO, weights_mem}});
      }
    }
    if (op == Op::kForward) {
      plan.conv.execute(rt.stream, {{DNNL_ARG_SRC, src_mem},
                                    {DNNL_ARG_WEIGHTS, weights_mem},
                                    {DNNL_ARG_DST, dst_mem}});
    } else if (op == Op::kBackwardData) {
      plan.conv.execute(rt.stream, {{DNNL_ARG_DIFF_SRC, src_mem},
                                    {DNNL_ARG_WEIGHTS, weights_mem},
                                    {DNNL_ARG_DIFF_DST, dst_mem}});
    } else {
      plan.conv.execute(rt.stream, {{DNNL_ARG_SRC, src_mem},
                                    {DNNL_ARG_DIFF_WEIGHTS, weights_mem},
                                    {DNNL_ARG_DIFF_DST, dst_mem}});
      if (plan.reorder_weights) {
        plan.weights_reorder.execute(
            rt.stream, {{DNNL_ARG_FROM, weights_mem}, {DNNL_ARG_TO, hwio_mem}});
      }
    }
    rt.stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal,
                      std::string("oneDNN convolution failed: ") + e.what());
  }
  return ffi::Error::Success();
}

// image: [n, h, w, c]; kernel: [kh, kw, c, o]; out: [n, oh, ow, o].
Geometry geometry(ffi::Span<const int64_t> image,
                  ffi::Span<const int64_t> kernel,
                  ffi::Span<const int64_t> out, int64_t sh, int64_t sw,
                  int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  return Geometry{image[0], image[1], image[2], image[3], out[1], out[2],
                  out[3], kernel[0], kernel[1], sh, sw, pt, pb, pl, pr};
}

ffi::Error ConvForward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw,
                       int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  auto g = geometry(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw,
                    pt, pb, pl, pr);
  return run(Op::kForward, g, x.typed_data(), w.typed_data(),
             y->typed_data());
}

ffi::Error ConvBackwardData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                            ffi::ResultBuffer<ffi::F32> dx, int64_t sh,
                            int64_t sw, int64_t pt, int64_t pb, int64_t pl,
                            int64_t pr) {
  auto g = geometry(dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw,
                    pt, pb, pl, pr);
  return run(Op::kBackwardData, g, dx->typed_data(), w.typed_data(),
             dy.typed_data());
}

ffi::Error ConvBackwardWeights(ffi::Buffer<ffi::F32> x,
                               ffi::Buffer<ffi::F32> dy,
                               ffi::ResultBuffer<ffi::F32> dw, int64_t sh,
                               int64_t sw, int64_t pt, int64_t pb, int64_t pl,
                               int64_t pr) {
  auto g = geometry(x.dimensions(), dw->dimensions(), dy.dimensions(), sh, sw,
                    pt, pb, pl, pr);
  return run(Op::kBackwardWeights, g, x.typed_data(), dw->typed_data(),
             dy.typed_data());
}

template <typename Binding>
auto with_geometry_attrs(Binding binding) {
  return std::move(binding)
      .template Attr<int64_t>("stride_h")
      .template Attr<int64_t>("stride_w")
      .template Attr<int64_t>("pad_top")
      .template Attr<int64_t>("pad_bottom")
      .template Attr<int64_t>("pad_left")
      .template Attr<int64_t>("pad_right");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    cnn_onednn_conv_forward, ConvForward,
    with_geometry_attrs(ffi::Ffi::Bind()
                            .Arg<ffi::Buffer<ffi::F32>>()
                            .Arg<ffi::Buffer<ffi::F32>>()
                            .Ret<ffi::Buffer<ffi::F32>>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    cnn_onednn_conv_backward_data, ConvBackwardData,
    with_geometry_attrs(ffi::Ffi::Bind()
                            .Arg<ffi::Buffer<ffi::F32>>()
                            .Arg<ffi::Buffer<ffi::F32>>()
                            .Ret<ffi::Buffer<ffi::F32>>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    cnn_onednn_conv_backward_weights, ConvBackwardWeights,
    with_geometry_attrs(ffi::Ffi::Bind()
                            .Arg<ffi::Buffer<ffi::F32>>()
                            .Arg<ffi::Buffer<ffi::F32>>()
                            .Ret<ffi::Buffer<ffi::F32>>()));
