// The bf16 headroom of oneDNN's convolution on this CPU, outside mocod: forward (training) convolution of one
// ResNet layer (N 256, 64->64 channels, 16x16, 3x3, pad 1) in f32 and in bf16 (f32 accumulation), layouts chosen by
// oneDNN, best of 10, three alternating rounds; prints each implementation, time, GFLOP/s and the bf16/f32 ratio.
// Run: gcc -O2 bench/dnnl_conv_bf16.c -o /tmp/dnnl_conv_bf16 -ldnnl && OMP_NUM_THREADS=2 /tmp/dnnl_conv_bf16
#include <oneapi/dnnl/dnnl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#define CHECK(x) do { dnnl_status_t st_ = (x); if (st_ != dnnl_success) { printf("fail %s: %d\n", #x, st_); exit(1);} } while (0)
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static double run(dnnl_engine_t eng, dnnl_stream_t st, dnnl_data_type_t dt, dnnl_prop_kind_t prop, int iters) {
    dnnl_dims_t src = {256, 64, 16, 16}, wei = {64, 64, 3, 3}, dst = {256, 64, 16, 16}, strides = {1, 1}, pad = {1, 1};
    dnnl_memory_desc_t s, w, d;
    CHECK(dnnl_memory_desc_init_by_tag(&s, 4, src, dt, dnnl_format_tag_any));
    CHECK(dnnl_memory_desc_init_by_tag(&w, 4, wei, dt, dnnl_format_tag_any));
    CHECK(dnnl_memory_desc_init_by_tag(&d, 4, dst, dt, dnnl_format_tag_any));
    dnnl_convolution_desc_t cd;
    CHECK(dnnl_convolution_forward_desc_init(&cd, prop, dnnl_convolution_direct, &s, &w, NULL, &d, strides, pad, pad));
    dnnl_primitive_desc_t pd;
    CHECK(dnnl_primitive_desc_create(&pd, &cd, NULL, eng, NULL));
    const char *impl; CHECK(dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl));
    dnnl_primitive_t p; CHECK(dnnl_primitive_create(&p, pd));
    const dnnl_memory_desc_t *qs = dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
    const dnnl_memory_desc_t *qw = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    const dnnl_memory_desc_t *qd = dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    const dnnl_memory_desc_t *qws = dnnl_primitive_desc_query_md(pd, dnnl_query_workspace_md, 0);
    dnnl_memory_t ms, mw, md, mws = NULL;
    CHECK(dnnl_memory_create(&ms, qs, eng, DNNL_MEMORY_ALLOCATE));
    CHECK(dnnl_memory_create(&mw, qw, eng, DNNL_MEMORY_ALLOCATE));
    CHECK(dnnl_memory_create(&md, qd, eng, DNNL_MEMORY_ALLOCATE));
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, ms}, {DNNL_ARG_WEIGHTS, mw}, {DNNL_ARG_DST, md}};
    int n = 3;
    if (qws && dnnl_memory_desc_get_size(qws) > 0) { CHECK(dnnl_memory_create(&mws, qws, eng, DNNL_MEMORY_ALLOCATE)); args[3].arg = DNNL_ARG_WORKSPACE; args[3].memory = mws; n = 4; }
    CHECK(dnnl_primitive_execute(p, st, n, args)); CHECK(dnnl_stream_wait(st));
    double best = 1e9;
    for (int i = 0; i < iters; i++) {
        double t0 = now();
        CHECK(dnnl_primitive_execute(p, st, n, args)); CHECK(dnnl_stream_wait(st));
        double t = now() - t0; if (t < best) best = t;
    }
    printf("%s %-8s %-40s best %.2f ms  %.0f GFLOP/s\n", dt == dnnl_f32 ? "f32 " : "bf16", prop == dnnl_forward_training ? "train" : "infer", impl, best * 1e3,
           2.0 * 256 * 64 * 16 * 16 * 64 * 9 / best / 1e9);
    return best;
}
int main(void) {
    dnnl_engine_t eng; dnnl_stream_t st;
    CHECK(dnnl_engine_create(&eng, dnnl_cpu, 0));
    CHECK(dnnl_stream_create(&st, eng, dnnl_stream_default_flags));
    for (int r = 0; r < 3; r++) {
        double a = run(eng, st, dnnl_f32, dnnl_forward_training, 10);
        double b = run(eng, st, dnnl_bf16, dnnl_forward_training, 10);
        printf("round %d: bf16 / f32 speed = %.2fx\n", r + 1, a / b);
    }
    return 0;
}
