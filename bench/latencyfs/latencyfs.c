/*
 * latencyfs: a read-only passthrough FUSE filesystem that sleeps on every metadata call.
 *
 * It stands in for a network filesystem (Lustre, GPFS, DVS at NERSC) where each stat,
 * lookup, open or directory read is a round trip of 0.1-2 ms: the crawl benchmark mounts
 * a local tree through it and compares crawlers on the same mount.
 *
 *   latencyfs MOUNTPOINT --source=DIR --latency-us=N [-f] [-o max_threads=256] ...
 *
 * Every getattr (the kernel's LOOKUP and GETATTR both come here), readlink, opendir,
 * readdir, open and statfs sleeps N microseconds before it answers; reads of file data
 * do not. The kernel's attribute, entry and negative caches are switched off
 * (attr_timeout, entry_timeout and negative_timeout 0), so every stat of every path
 * crosses into this process, as it would cross the network. Requests are served by
 * many threads at once (fuse_main is multi-threaded; pass -o max_threads=N, libfuse >=
 * 3.12, so that a crawler with 100 calls in flight sees 100 sleeping in parallel).
 * Written in C: a Python FUSE daemon saturates near 2k calls per second and hides the
 * crawler's parallelism.
 *
 * --direct-io opens every file with FOPEN_DIRECT_IO: the kernel keeps no page cache of
 * its data, so every read(2) of the tree crosses into this process, as on a network
 * filesystem without a client cache (DVS at NERSC). The bytes served by read are counted;
 * reading the hidden file /.latencyfs-bytes-read (not listed in any directory, so no
 * crawl sees it) returns the count so far as decimal text. The upload benchmark and the
 * read-once test take the difference before and after an upload.
 *
 * Build: gcc -O2 -Wall -o latencyfs latencyfs.c $(pkg-config --cflags --libs fuse3)
 */

#define FUSE_USE_VERSION 31
#define _GNU_SOURCE

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

static struct options {
	const char *source;
	unsigned int latency_us;
	int direct_io;
} options;

/* File data served by read, in bytes (the counter file's own reads excluded). */
static uint64_t bytes_read;
static const char counter_path[] = "/.latencyfs-bytes-read";
#define COUNTER_FH UINT64_MAX

#define OPTION(t, p) {t, offsetof(struct options, p), 1}
static const struct fuse_opt option_spec[] = {
	OPTION("--source=%s", source),
	OPTION("--latency-us=%u", latency_us),
	OPTION("--direct-io", direct_io),
	FUSE_OPT_END,
};

/* One network round trip. */
static void lag(void)
{
	struct timespec ts;

	if (!options.latency_us)
		return;
	ts.tv_sec = options.latency_us / 1000000;
	ts.tv_nsec = (long)(options.latency_us % 1000000) * 1000;
	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

/* The path in the source tree; -ENAMETOOLONG if it does not fit. */
static int source_path(char *out, size_t size, const char *path)
{
	int n = snprintf(out, size, "%s%s", options.source, path);

	return (n < 0 || (size_t)n >= size) ? -ENAMETOOLONG : 0;
}

#define SOURCE_PATH(var, path)                                 \
	char var[PATH_MAX];                                    \
	do {                                                   \
		int rc_ = source_path(var, sizeof(var), path); \
		if (rc_)                                       \
			return rc_;                            \
	} while (0)

static void *lfs_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	(void)conn;
	cfg->use_ino = 1;
	cfg->attr_timeout = 0;
	cfg->entry_timeout = 0;
	cfg->negative_timeout = 0;
	cfg->kernel_cache = 0;
	return NULL;
}

static int lfs_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	lag();
	if (strcmp(path, counter_path) == 0) {
		memset(st, 0, sizeof(*st));
		st->st_mode = S_IFREG | 0444;
		st->st_nlink = 1;
		st->st_size = 32; /* read with direct I/O: the text may be shorter */
		return 0;
	}
	if (fi && fi->fh != COUNTER_FH)
		return fstat((int)fi->fh, st) == -1 ? -errno : 0;
	SOURCE_PATH(full, path);
	return lstat(full, st) == -1 ? -errno : 0;
}

static int lfs_readlink(const char *path, char *buf, size_t size)
{
	ssize_t n;

	lag();
	SOURCE_PATH(full, path);
	n = readlink(full, buf, size - 1);
	if (n == -1)
		return -errno;
	buf[n] = '\0';
	return 0;
}

static int lfs_opendir(const char *path, struct fuse_file_info *fi)
{
	DIR *dir;

	lag();
	SOURCE_PATH(full, path);
	dir = opendir(full);
	if (!dir)
		return -errno;
	fi->fh = (uint64_t)(uintptr_t)dir;
	return 0;
}

static int lfs_readdir(const char *path, void *buf, fuse_fill_dir_t filler, off_t offset,
		       struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
	DIR *dir = (DIR *)(uintptr_t)fi->fh;
	struct dirent *de;

	(void)path;
	(void)offset;
	(void)flags;
	lag();
	/* the whole directory in one answer (offset 0): libfuse keeps it for the kernel's
	 * follow-up reads, so one sleep per directory listing, as on a network filesystem
	 * that returns a directory in a few large replies */
	rewinddir(dir);
	while ((de = readdir(dir)) != NULL) {
		struct stat st;

		memset(&st, 0, sizeof(st));
		st.st_ino = de->d_ino;
		st.st_mode = (mode_t)DTTOIF(de->d_type);
		if (filler(buf, de->d_name, &st, 0, 0))
			break;
	}
	return 0;
}

static int lfs_releasedir(const char *path, struct fuse_file_info *fi)
{
	(void)path;
	closedir((DIR *)(uintptr_t)fi->fh);
	return 0;
}

static int lfs_open(const char *path, struct fuse_file_info *fi)
{
	int fd;

	lag();
	if ((fi->flags & O_ACCMODE) != O_RDONLY)
		return -EROFS;
	if (strcmp(path, counter_path) == 0) {
		fi->fh = COUNTER_FH;
		fi->direct_io = 1;
		return 0;
	}
	SOURCE_PATH(full, path);
	fd = open(full, fi->flags);
	if (fd == -1)
		return -errno;
	fi->fh = (uint64_t)fd;
	fi->direct_io = options.direct_io ? 1 : 0;
	return 0;
}

static int lfs_read(const char *path, char *buf, size_t size, off_t offset,
		    struct fuse_file_info *fi)
{
	ssize_t n;

	(void)path;
	if (fi->fh == COUNTER_FH) {
		char text[32];
		int len = snprintf(text, sizeof(text), "%llu\n",
				   (unsigned long long)__atomic_load_n(&bytes_read, __ATOMIC_RELAXED));

		if (offset >= len)
			return 0;
		n = (ssize_t)(len - offset) < (ssize_t)size ? len - offset : (ssize_t)size;
		memcpy(buf, text + offset, (size_t)n);
		return (int)n;
	}
	n = pread((int)fi->fh, buf, size, offset);
	if (n > 0)
		__atomic_add_fetch(&bytes_read, (uint64_t)n, __ATOMIC_RELAXED);
	return n == -1 ? -errno : (int)n;
}

static int lfs_release(const char *path, struct fuse_file_info *fi)
{
	(void)path;
	if (fi->fh != COUNTER_FH)
		close((int)fi->fh);
	return 0;
}

static int lfs_statfs(const char *path, struct statvfs *st)
{
	(void)path;
	lag();
	return statvfs(options.source, st) == -1 ? -errno : 0;
}

static const struct fuse_operations lfs_ops = {
	.init = lfs_init,
	.getattr = lfs_getattr,
	.readlink = lfs_readlink,
	.opendir = lfs_opendir,
	.readdir = lfs_readdir,
	.releasedir = lfs_releasedir,
	.open = lfs_open,
	.read = lfs_read,
	.release = lfs_release,
	.statfs = lfs_statfs,
};

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	static char source[PATH_MAX];
	int ret;

	if (fuse_opt_parse(&args, &options, option_spec, NULL) == -1)
		return 2;
	if (!options.source || !realpath(options.source, source)) {
		fprintf(stderr, "latencyfs: --source=DIR must name an existing directory\n");
		fuse_opt_free_args(&args);
		return 2;
	}
	options.source = source;
	ret = fuse_main(args.argc, args.argv, &lfs_ops, NULL);
	fuse_opt_free_args(&args);
	return ret;
}
