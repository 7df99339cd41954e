/* Where nemoq may write, and what it may read.
 *
 * Nothing nemoq writes may land in, or replace, the input checkpoint.  Path
 * strings cannot decide that: a bind mount, a symlink or a second name for
 * the same directory all defeat a prefix comparison.  These checks compare
 * (device, inode) pairs instead.  The ancestors of a path are found by
 * opening ".." from it, one level at a time, exactly the way the kernel
 * walks them (a bind mount's root leads to its mount point's parent, not to
 * the parent of the directory it shows), so every name the directory has is
 * covered by its identity. */
#ifndef NQ_IO_OUTPATH_H
#define NQ_IO_OUTPATH_H

#include "core/error.h"

/* An output directory that a rename will create or replace: refused when it
 * is the input directory, lies inside it (through any alias), or contains
 * it; when it exists and is not a directory; or when its nearest existing
 * ancestor cannot be opened.  input_dir may be NULL (only the last checks). */
int nq_outpath_check_dir(const char *out_dir, const char *input_dir, nq_error *err);

/* An output file, written beside itself and renamed into place: refused when
 * its directory does not exist, is not writable, or lies inside input_dir or
 * output_dir (the checkpoint being written: a report there would replace its
 * files); or when the path names a directory.  Either directory may be NULL.
 * `what` starts the error message (e.g. "--report"). */
int nq_outpath_check_file(const char *path, const char *input_dir, const char *output_dir,
                          const char *what, nq_error *err);

/* A file read later in the run (calibration text, --eval text, ...): exists,
 * is a regular file, can be opened for reading.  Checked up front so that a
 * typo fails before hours of work, not after them. */
int nq_inpath_check_file(const char *path, const char *what, nq_error *err);

#endif
