/* Ctrl-C during a long write.
 *
 * Killing `nemoq quantize` outright would leave its hidden temporary output
 * (tens of GB) behind.  The command instead turns the first SIGINT/SIGTERM
 * into a request that the pipeline checks between tensors and layers; it then
 * fails through its ordinary error path, which removes the temporary
 * directory, so nothing appears at OUT.  A second signal kills at once.
 * SIGXFSZ (a file-size limit) is ignored so that write() fails with EFBIG and
 * takes the same path. */
#ifndef NQ_CORE_INTERRUPT_H
#define NQ_CORE_INTERRUPT_H

#include "core/error.h"

void nq_interrupt_install(void);
/* Back to the default actions (a pending request is kept). */
void nq_interrupt_uninstall(void);
/* What a signal does; tests call it directly. */
void nq_interrupt_request(void);
void nq_interrupt_clear(void);
/* -1 with "interrupted" in err once a request has arrived, else 0. */
int nq_interrupt_check(nq_error *err);

#endif
