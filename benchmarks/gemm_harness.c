/* The float32 GEMM (fastreg/_kernels/matmul/kernel.h) timed from C, without Python: the fastest
 * call of >= 1 s of back-to-back calls (wall clock, and thread CPU time of the calling thread).
 * On a shared machine the fastest call is the one that ran undisturbed (README_gemm.md).
 *
 *   gcc -O3 -march=native -fopenmp -fno-math-errno -Ifastreg/_kernels/matmul \
 *       -Ifastreg/_kernels/common -o /tmp/gemm_harness benchmarks/gemm_harness.c -lm
 *   GOMP_SPINCOUNT=10000 /tmp/gemm_harness M N K THREADS MODE [B_OFFSET_BYTES]
 *
 * C[M, N] = A[M, K] @ B: MODE 0 = pre-packed weights (serving, fr_pack_weight), 1 = x @ W.T
 * (training forward, W.T packed per call), 2 = dY @ W (B row-major), 3 = dY.T @ X (A read
 * transposed: the weight gradient), 4 = mode 3 with the fused row sums (dbias, as the training
 * step calls it), 5 = mode 2 with the ReLU backward in the epilogue (C = C * (Y > 0), Y the
 * saved activation: fr_gemm_ep, the fused input gradient), 6 = mode 2 then the same ReLU backward
 * as a separate pass over C (what the unfused layers run). B_OFFSET_BYTES misaligns the packed
 * weights (mode 0).
 * Build a copy of the tree before a change the same way to A/B two kernels in the same minutes.
 * Not part of the package or of asv. */
#include "kernel.h"
#include <stdio.h>
#include <time.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+1e-9*t.tv_nsec;}
static double cpu(void){struct timespec t;clock_gettime(CLOCK_THREAD_CPUTIME_ID,&t);return t.tv_sec+1e-9*t.tv_nsec;}
int main(int argc, char **argv) {
  if (argc < 6) { fprintf(stderr, "usage: %s M N K THREADS MODE [B_OFFSET_BYTES]\n", argv[0]); return 2; }
  int m=atoi(argv[1]),n=atoi(argv[2]),k=atoi(argv[3]),nt=argc>4?atoi(argv[4]):1, mode=argc>5?atoi(argv[5]):0;
  float*A=aligned_alloc(64,sizeof(float)*m*k+64),*B=aligned_alloc(64,sizeof(float)*n*k+64),*C=aligned_alloc(64,sizeof(float)*m*n+64);
  for(long i=0;i<(long)m*k;i++)A[i]=(i%7)*0.1f; for(long i=0;i<(long)n*k;i++)B[i]=(i%5)*0.1f;
  float*Bp=(float*)((char*)aligned_alloc(64,sizeof(float)*fr_packed_size_f32(n,k)+64)+(argc>6?atoi(argv[6]):0)); fr_pack_weight_f32(n,k,B,Bp);
  float*rs=aligned_alloc(64,sizeof(float)*m+64);
  float*Y=aligned_alloc(64,sizeof(float)*m*n+64); for(long i=0;i<(long)m*n;i++)Y[i]=(i%3)?0.5f:0.0f;
  double best=1e9,bestc=1e9; int reps=0; double tstart=now();
  while(now()-tstart<1.0 || reps<20){
    double t0=now(),c0=cpu();
    if(mode==0) fr_gemm_f32(m,n,k,A,k,1,NULL,1,k,Bp,C,n,0,NULL,1,0,NULL,nt);      /* packed fwd */
    else if(mode==1) fr_gemm_f32(m,n,k,A,k,1,B,1,k,NULL,C,n,0,NULL,1,0,NULL,nt);  /* fwd x@W.T */
    else if(mode==2) fr_gemm_f32(m,n,k,A,k,1,B,n,1,NULL,C,n,0,NULL,0,0,NULL,nt);  /* dx: B (k,n) rows */
    else if(mode==3) fr_gemm_f32(m,n,k,A,1,m,B,n,1,NULL,C,n,0,NULL,0,0,NULL,nt);  /* dW: A=dy.T */
    else if(mode==4) fr_gemm_f32(m,n,k,A,1,m,B,n,1,NULL,C,n,0,NULL,0,0,rs,nt);   /* dW + dbias */
    else if(mode==5) fr_gemm_ep_f32(m,n,k,A,k,1,B,n,1,NULL,C,n,0,NULL,0,0,NULL,Y,n,FR_ACT_RELU,0,nt);
    else {                                              /* dx, then a separate ReLU backward */
      fr_gemm_f32(m,n,k,A,k,1,B,n,1,NULL,C,n,0,NULL,0,0,NULL,nt);
#pragma omp parallel for num_threads(nt) if (nt > 1)
      for(int i=0;i<m;i++) fr_act_grad_f32(1,n,C+(long)i*n,n,Y+(long)i*n,n,FR_ACT_RELU,0);
    }
    double t=now()-t0,c=cpu()-c0; if(t<best)best=t; if(c<bestc)bestc=c; reps++;
  }
  double fl=2.0*m*n*k;
  printf("m%d n%d k%d nt%d mode%d: wall-min %.1f us %.1f GF/s | cpu-min %.1f GF/s\n",m,n,k,nt,mode,best*1e6,fl/best*1e-9,fl/bestc*1e-9);
}
