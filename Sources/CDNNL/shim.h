#include <oneapi/dnnl/dnnl.h>

/* The OpenMP runtime oneDNN runs on (libgomp): the calling thread's team size. */
int omp_get_max_threads(void);
void omp_set_num_threads(int);
