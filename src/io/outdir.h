/* The life of an output directory: the hidden temporary sibling everything
 * is written into, the one atomic step that puts it in place, and the
 * clean-up of temporaries left by runs that were killed.
 *
 * - The temporary directory ".OUT.nemoq-tmp-XXXXXX" is created beside OUT
 *   (same file system, so the final step is a rename) with mode 0777 and
 *   files 0666, both minus the umask; the run holds an exclusive flock on
 *   it for as long as it lives, which is how a later run tells a live
 *   temporary from a stale one.
 * - Without --force the output is placed with renameat2(RENAME_NOREPLACE):
 *   if anything appeared at OUT during the run, the rename fails, OUT is
 *   left untouched and the new output is discarded.  (OUT may be an empty
 *   directory at start-up: then plain rename(), which replaces a directory
 *   only while it is empty.)  Where the file system lacks RENAME_NOREPLACE,
 *   OUT is claimed with an exclusive mkdir and the rename replaces that
 *   empty placeholder, which rename() does only while it is still empty.
 * - With --force an existing OUT is swapped with renameat2(RENAME_EXCHANGE),
 *   so at every instant OUT is either the old or the new complete output;
 *   the old tree, now at the temporary name, is then removed.  Where the file
 *   system lacks RENAME_EXCHANGE: OUT is renamed to ".OUT.nemoq-tmp-XXXXXX.old"
 *   and the new output renamed into place; a kill between the two leaves the
 *   old output there, and the next run says how to recover it.
 * - Removal never follows a symbolic link and never descends into another
 *   mount (a bind mount inside an old output is not emptied).
 * - Before and at the final step OUT is checked against the input by device
 *   and inode (io/outpath.h). */
#ifndef NQ_IO_OUTDIR_H
#define NQ_IO_OUTDIR_H

#include <stdbool.h>
#include <stdio.h>

#include "core/error.h"

typedef struct nq_outdir {
    char *out;        /* absolute final path */
    char *tmp;        /* the temporary directory */
    char *input_dir;  /* protected; may be NULL */
    int lock_fd;      /* the flock'd temporary directory */
    bool force;
    bool out_existed; /* at start-up (then empty, unless force) */
    bool committed;
} nq_outdir;

/* What nq_outdir_open checks, without creating anything (a command runs it
 * before any work): OUT's parent exists and is writable, OUT is not the
 * input, inside it or around it, OUT is absent, an empty directory, or
 * `force` is set. */
int nq_outdir_check(const char *out_dir, const char *input_dir, bool force, nq_error *err);
/* Checks, then creates the locked temporary directory. */
int nq_outdir_open(nq_outdir *o, const char *out_dir, const char *input_dir, bool force,
                   nq_error *err);
/* Puts the temporary directory at OUT (see above); on failure it is removed. */
int nq_outdir_commit(nq_outdir *o, nq_error *err);
/* Removes the temporary directory unless committed; frees everything. */
void nq_outdir_close(nq_outdir *o);

/* Creates the hidden temporary directory ".OUT.nemoq-tmp-XXXXXX" beside
 * out_path (whose parent must exist) and locks it: *tmp (malloc'd, absolute)
 * and *lock_fd, which the caller closes once the directory is gone.  Used
 * by nq_outdir_open and by GGUF's calibration staging. */
int nq_outdir_temp(const char *out_path, char **tmp, int *lock_fd, nq_error *err);

/* Temporaries beside out_dir (".OUT.nemoq-tmp-*": directories, and the
 * files the GGUF writer creates) left by runs that were killed: each one no
 * live run holds is reported on `log` with its size and, with `remove`,
 * deleted.  Returns how many stale ones were found. */
int nq_outdir_stale(const char *out_dir, bool remove, FILE *log);

/* Removes a directory tree (no symlink followed, no mount crossed);
 * 0 also when it does not exist. */
int nq_remove_tree(const char *path);

#endif
