/* The fp32 FMA peak of one core of an AVX2 CPU, and its clock, for reading the model
 * FLOP utilisation that bench/train_throughput.py reports against torch's matmul rate.
 *
 *   gcc -O2 -mavx2 -mfma bench/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak
 *
 * Peak: ten independent chains of 256-bit fused multiply-adds (enough to cover the FMA
 * latency on the x86 cores measured), best of five timed loops; 16 FLOP per FMA (8 lanes x 2).
 * Clock: one dependent chain of the same FMA; the time per FMA over the core's FMA latency
 * in cycles (5 on AMD Zen 1 and 2, 4 on Intel Skylake and later, passed as argv[1])
 * is the cycle time. */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    const double latency = argc > 1 ? atof(argv[1]) : 5.0;
    const long n = 200000000;
    __m256 acc[10];
    const __m256 mul = _mm256_set1_ps(0.999999f), add = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < 10; i++) acc[i] = _mm256_set1_ps(1.0f + i);
    double best = 1e30;
    for (int rep = 0; rep < 5; rep++) {
        double t = seconds();
        for (long k = 0; k < n; k++) {
#pragma GCC unroll 10
            for (int i = 0; i < 10; i++) acc[i] = _mm256_fmadd_ps(acc[i], mul, add);
        }
        t = seconds() - t;
        if (t < best) best = t;
    }
    double chain_best = 1e30;
    __m256 dep = acc[0];
    for (int rep = 0; rep < 3; rep++) {
        double t = seconds();
        for (long k = 0; k < n / 4; k++) dep = _mm256_fmadd_ps(dep, mul, add);
        t = seconds() - t;
        if (t < chain_best) chain_best = t;
    }
    float out[8], keep = 0;  /* use the results so the loops are not optimised away */
    for (int i = 0; i < 10; i++) { _mm256_storeu_ps(out, acc[i]); keep += out[0]; }
    _mm256_storeu_ps(out, dep);
    keep += out[0];
    double ns = chain_best / (n / 4) * 1e9;
    printf("fp32 FMA peak of one core: %.1f GFLOP/s\n", (double)n * 10 * 16 / best / 1e9);
    printf("dependent FMA: %.3f ns each, so a clock of %.2f GHz at %.0f cycles latency (checksum %g)\n",
           ns, latency / ns, latency, keep);
    return 0;
}
