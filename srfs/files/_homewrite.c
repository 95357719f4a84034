/*
 * srfs.files._homewrite: srfs.files.home.write_files' common case in one
 * release of the GIL.
 *
 * Written in Python, a batch of ~/.sr files costs some seventeen system
 * calls per file, and CPython lets the GIL go around each: with the event
 * loop busy, every one is a hand-off between the worker thread and the
 * loop (two futex round trips), which cost more than the calls. Here the
 * same steps run with the GIL released once for the whole batch.
 *
 * Each file keeps a spare beside it (".usrloc.spare"): the file it
 * replaced last time. The next write goes into the spare, over its old
 * content, and the two names are swapped (renameat2 RENAME_EXCHANGE), so
 * a write neither makes nor frees an inode or a block. Replacing a file by
 * a new one frees the old one's blocks inside the rename, and on a
 * filesystem mounted with "discard" the rename then waits for the device
 * to discard them: that was half the time the writing thread spent
 * blocked, more than the two syncs. A spare that is anything but a
 * regular file of the user's with one link is removed and made anew.
 *
 * Only the usual case is done here: root acting as each user through its
 * file identity, ~/.sr already there and passing the checks. Anything
 * else gets an errno back with nothing left behind (no temporary file, the
 * old file untouched), and home.py writes that file on its own path, which
 * makes ~/.sr when it is missing and words the reason when it fails. So
 * every check below is one that home.py's SrDir makes too; this file must
 * never accept what SrDir refuses.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define SR_DIR ".sr"
#define DIR_FLAGS (O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)
#define HOME_FLAGS (O_PATH | O_DIRECTORY | O_CLOEXEC)
#define WRITE_FLAGS (O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)

typedef struct {
    /* In: borrowed from the bytes objects the batch holds a reference to. */
    const char *home;
    const char *tmp;    /* a new temporary file, when the spare is not used */
    const char *spare;  /* the spare's name, or "" for none */
    const char *name;
    const char *data;
    Py_ssize_t size;
    uid_t uid;
    gid_t gid;
    mode_t mode;
    /* State. */
    int sr;      /* ~/.sr, or -1 */
    int fd;      /* the temporary file (or the spare), or -1 */
    dev_t dev;   /* ~/.sr's filesystem */
    int staged;  /* the temporary file (or the spare) exists */
    int swap;    /* fd is the spare: exchange it with the file */
    int err;     /* 0: durable; else why it is not (and nothing is left) */
} item_t;

/* Take the user's file identity; 0, or -1 when the kernel did not give it. */
static int
act_as(uid_t uid, gid_t gid)
{
    setfsgid(gid);
    setfsuid(uid);
    /* A rejected id (-1 always is) only reports the current one. */
    if ((uid_t)setfsuid((uid_t)-1) != uid || (gid_t)setfsgid((gid_t)-1) != gid)
        return -1;
    return 0;
}

/* Back to root's file identity; 0, or -1 if the thread could not get it
 * back (then nothing more may run on this thread). fsuid first: root
 * again is what allows setting the fsgid. */
static int
act_as_root(void)
{
    setfsuid(0);
    setfsgid(0);
    if ((uid_t)setfsuid((uid_t)-1) != 0 || (gid_t)setfsgid((gid_t)-1) != 0)
        return -1;
    return 0;
}

static int
open_retry(int dirfd, const char *path, int flags, mode_t mode)
{
    int fd;
    do {
        fd = openat(dirfd, path, flags, mode);
    } while (fd < 0 && errno == EINTR);
    return fd;
}

/* The spare, opened (or made) to be written over and swapped with the
 * file: sets it->fd and it->swap, or leaves it->fd at -1 for a new
 * temporary file. Only when the file is a regular file or missing, so
 * that what takes its place (a symlink, a directory) fares as with a
 * rename. Only a spare that is a regular file of the user's with no other
 * link is written over, so that the write changes nothing but itself;
 * anything else by that name but a directory is removed (never followed:
 * a symlink goes, not what it names) and a new spare made. As the user. */
static void
open_spare(item_t *it)
{
    struct stat st;
    if (fstatat(it->sr, it->name, &st, AT_SYMLINK_NOFOLLOW) == 0 ? !S_ISREG(st.st_mode)
                                                                : errno != ENOENT)
        return;
    int fd = open_retry(it->sr, it->spare, WRITE_FLAGS, 0);
    int found = fd >= 0 || errno != ENOENT;
    if (fd >= 0 && !(fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == it->uid
                     && st.st_nlink == 1)) {
        close(fd);
        fd = -1;
    }
    if (fd < 0) {
        if (found && (fstatat(it->sr, it->spare, &st, AT_SYMLINK_NOFOLLOW) != 0
                      || S_ISDIR(st.st_mode) || unlinkat(it->sr, it->spare, 0) != 0))
            return;
        fd = open_retry(it->sr, it->spare, WRITE_FLAGS | O_CREAT | O_EXCL, 0600);
        if (fd < 0)
            return;
    }
    it->fd = fd;
    it->tmp = it->spare;
    it->swap = 1;
}

/* Put the staged file in place: swapped with the old one, which becomes
 * the spare, or renamed over it. 0, or the errno. As the user. */
static int
publish(item_t *it)
{
    if (it->swap) {
        if (renameat2(it->sr, it->tmp, it->sr, it->name, RENAME_EXCHANGE) == 0)
            return 0;
        /* No file yet (its first write), or a filesystem without exchange. */
        if (errno != ENOENT && errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP)
            return errno ? errno : EIO;
    }
    if (renameat(it->sr, it->tmp, it->sr, it->name) == 0)
        return 0;
    return errno ? errno : EIO;
}

/* The file's ~/.sr, opened and checked as SrDir._open_home and _open_sr
 * do (without creating it); then the temporary file, written. As the
 * user. Sets it->err on failure, with nothing left behind. */
static void
stage(item_t *it)
{
    struct stat st;
    int home = open_retry(AT_FDCWD, it->home, HOME_FLAGS, 0);
    if (home < 0) {
        it->err = errno ? errno : EIO;
        return;
    }
    if (fstat(home, &st) != 0 || (st.st_uid != it->uid && st.st_uid != 0)
            || (st.st_mode & S_IWOTH)) {
        it->err = EPERM;
        close(home);
        return;
    }
    it->sr = open_retry(home, SR_DIR, DIR_FLAGS, 0);
    it->err = it->sr < 0 ? (errno ? errno : EIO) : 0;
    close(home);
    if (it->sr < 0)
        return;
    if (fstat(it->sr, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != it->uid
            || (st.st_mode & (S_IWGRP | S_IWOTH))) {
        it->err = EPERM;
        return;
    }
    it->dev = st.st_dev;
    if (*it->spare)
        open_spare(it);
    if (it->fd < 0) {
        it->fd = open_retry(it->sr, it->tmp, WRITE_FLAGS | O_CREAT | O_EXCL, 0600);
        if (it->fd < 0) {
            it->err = errno ? errno : EIO;
            return;
        }
    }
    it->staged = 1;
    if (fstat(it->fd, &st) != 0) {
        it->err = errno ? errno : EIO;
        return;
    }
    /* A setgid ~/.sr gives new files its group: the file is the user's. */
    if ((st.st_uid != it->uid || st.st_gid != it->gid)
            && fchown(it->fd, it->uid, it->gid) != 0) {
        it->err = errno ? errno : EIO;
        return;
    }
    if (fchmod(it->fd, it->mode) != 0) {
        it->err = errno ? errno : EIO;
        return;
    }
    const char *p = it->data;
    Py_ssize_t left = it->size;
    while (left > 0) {
        ssize_t n = pwrite(it->fd, p, (size_t)left, (off_t)(it->size - left));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            it->err = errno ? errno : EIO;
            return;
        }
        p += n;
        left -= n;
    }
    /* A spare longer than the new text keeps no tail of the old one. */
    if (st.st_size > (off_t)it->size && ftruncate(it->fd, (off_t)it->size) != 0)
        it->err = errno ? errno : EIO;
}

/* Undo what stage and publish left of a failed file: the temporary file
 * (as the user, who owns ~/.sr) and the fds. */
static void
discard(item_t *it)
{
    if (it->fd >= 0) {
        close(it->fd);
        it->fd = -1;
    }
    if (it->staged) {
        unlinkat(it->sr, it->tmp, 0);
        it->staged = 0;
    }
}

static void
close_sr(item_t *it)
{
    if (it->sr >= 0) {
        close(it->sr);
        it->sr = -1;
    }
}

static int
sync_retry(int (*sync)(int), int fd)
{
    int rc;
    do {
        rc = sync(fd);
    } while (rc != 0 && errno == EINTR);
    return rc == 0 ? 0 : (errno ? errno : EIO);
}

/* One syncfs per filesystem among the items still going (those with
 * it->err == 0); where it fails, fsync of each item's own fd instead (the
 * file, or with dirs, ~/.sr). A batch spans few filesystems: a short list. */
static void
sync_filesystems(item_t *items, Py_ssize_t n, int dirs)
{
    dev_t devs[16];
    int failed[16];
    Py_ssize_t known = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        item_t *it = &items[i];
        if (it->err)
            continue;
        int fd = dirs ? it->sr : it->fd;
        Py_ssize_t k = 0;
        while (k < known && devs[k] != it->dev)
            k++;
        int bad;
        if (k < known) {
            bad = failed[k];
        } else {
            bad = sync_retry(syncfs, fd) != 0;
            if (known < 16) {
                devs[known] = it->dev;
                failed[known] = bad;
                known++;
            }
        }
        if (bad) {
            int err = sync_retry(fsync, fd);
            if (err)
                it->err = err;
        }
    }
}

/* After a step taken as the user: a failed file is undone (still as the
 * user, who owns ~/.sr), then root's identity is taken back. 0, or -1
 * when it could not be. */
static int
settle(item_t *it)
{
    if (it->err)
        discard(it);
    if (act_as_root() != 0)
        return -1;
    if (it->err)
        close_sr(it);
    return 0;
}

/* The batch, with the GIL released: 0, or -1 when the thread's file
 * identity could not be put back (the caller must stop the thread; the
 * fds are closed, but no file is touched under an unknown identity). */
static int
write_batch(item_t *items, Py_ssize_t n)
{
    int rc = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        item_t *it = &items[i];
        if (act_as(it->uid, it->gid) != 0)
            it->err = EPERM;
        else
            stage(it);
        if (settle(it) != 0)
            goto out;
    }
    sync_filesystems(items, n, 0);
    for (Py_ssize_t i = 0; i < n; i++) {
        item_t *it = &items[i];
        if (!it->staged)
            continue;
        close(it->fd);
        it->fd = -1;
        if (act_as(it->uid, it->gid) != 0)
            it->err = EPERM;
        else if (!it->err && (it->err = publish(it)) == 0)
            it->staged = 0;
        if (settle(it) != 0)
            goto out;
    }
    sync_filesystems(items, n, 1);
    rc = 0;
out:
    for (Py_ssize_t i = 0; i < n; i++) {
        if (items[i].fd >= 0)
            close(items[i].fd);
        close_sr(&items[i]);
    }
    return rc;
}

PyDoc_STRVAR(write_batch_doc,
"write_batch(items, /) -> list[int]\n--\n\n"
"Write each (home, uid, gid, tmp, spare, name, data, mode) as ~/.sr/<name>,\n"
"durably, in one release of the GIL: stage every file (over the spare, or\n"
"as tmp when spare is empty or unfit), syncfs, swap with the spare or\n"
"rename, syncfs. One int per item: 0 once the file is durable in place,\n"
"else the errno of what stopped it, with its old file untouched and no\n"
"temporary file (nor spare) left. Root only; the thread's file identity\n"
"must be root's.");

static PyObject *
py_write_batch(PyObject *Py_UNUSED(self), PyObject *arg)
{
    PyObject *seq = PySequence_Tuple(arg);
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    item_t *items = PyMem_Calloc(n ? (size_t)n : 1, sizeof(item_t));
    PyObject *result = NULL;
    if (items == NULL) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        item_t *it = &items[i];
        unsigned int uid, gid, mode;
        /* The tuple holds the bytes objects for as long as seq lives. */
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(seq, i), "yIIyyyy#I:write_batch",
                              &it->home, &uid, &gid, &it->tmp, &it->spare, &it->name,
                              &it->data, &it->size, &mode))
            goto done;
        if (uid == 0 || uid == (unsigned int)-1 || gid == (unsigned int)-1
                || (mode & ~0644u) || strchr(it->name, '/') || strchr(it->tmp, '/')
                || strchr(it->spare, '/') || !strcmp(it->spare, it->name)
                || !strcmp(it->tmp, it->name) || !*it->tmp || !*it->name) {
            PyErr_SetString(PyExc_ValueError, "write_batch: not a file this path writes");
            goto done;
        }
        it->uid = (uid_t)uid;
        it->gid = (gid_t)gid;
        it->mode = (mode_t)mode;
        it->sr = -1;
        it->fd = -1;
    }
    if (geteuid() != 0 || setfsuid((uid_t)-1) != 0 || setfsgid((gid_t)-1) != 0) {
        PyErr_SetString(PyExc_RuntimeError,
                        "write_batch: needs root, acting as root");
        goto done;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = write_batch(items, n);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        PyErr_SetString(PyExc_RuntimeError,
                        "could not restore the thread's filesystem identity");
        goto done;
    }
    result = PyList_New(n);
    if (result == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *code = PyLong_FromLong(items[i].err);
        if (code == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, i, code);
    }
done:
    PyMem_Free(items);
    Py_DECREF(seq);
    return result;
}

static PyMethodDef methods[] = {
    {"write_batch", py_write_batch, METH_O, write_batch_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "srfs.files._homewrite",
    .m_doc = "write_files' common case with the GIL released once per batch.",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__homewrite(void)
{
    return PyModule_Create(&module);
}
