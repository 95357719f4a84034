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
 * A file its reader checks may be swapped before it is synced, and a
 * batch of such files then takes one sync (publish_early).
 *
 * Writer (below) queues such batches for one thread that takes them, writes
 * them and says which are durable without taking the GIL at all.
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
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define SR_DIR ".sr"
#define DIR_FLAGS (O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)
#define HOME_FLAGS (O_PATH | O_DIRECTORY | O_CLOEXEC)
#define WRITE_FLAGS (O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)
/* Read too: a checksummed file's spare is looked at before it is written over. */
#define SPARE_FLAGS (O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)
/* A checksummed file's first line names its run as "; write <run>.<seq>". */
#define RUN_MARK "; write "
#define FIRST_LINE_MAX 256

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
    int checksummed; /* the file's reader checks it and falls back to the spare */
    /* State. */
    int sr;      /* ~/.sr, or -1 */
    int fd;      /* the temporary file (or the spare), or -1 */
    dev_t dev;   /* ~/.sr's filesystem */
    int staged;  /* the temporary file (or the spare) exists */
    int swap;    /* fd is the spare: exchange it with the file */
    int same_run; /* the spare's first line names the new text's run (checksummed) */
    int early;   /* exchanged before any sync (checksummed): fd still open */
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
    int fd = open_retry(it->sr, it->spare, SPARE_FLAGS, 0);
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
        fd = open_retry(it->sr, it->spare, SPARE_FLAGS | O_CREAT | O_EXCL, 0600);
        if (fd < 0)
            return;
    }
    it->fd = fd;
    it->tmp = it->spare;
    it->swap = 1;
}

/* Whether the spare's first line names the same run as the new text's,
 * up to the "." before the write's number. As the user, before the write. */
static int
same_run(const item_t *it)
{
    Py_ssize_t limit = it->size < FIRST_LINE_MAX ? it->size : FIRST_LINE_MAX;
    const char *end = memchr(it->data, '\n', (size_t)limit);
    if (end == NULL)
        return 0;
    const char *mark = NULL;
    for (const char *p = it->data; p + sizeof RUN_MARK - 1 <= end; p++)
        if (memcmp(p, RUN_MARK, sizeof RUN_MARK - 1) == 0)
            mark = p;
    const char *dot = mark == NULL ? NULL : memchr(mark, '.', (size_t)(end - mark));
    if (dot == NULL)
        return 0;
    size_t want = (size_t)(dot - it->data) + 1;
    char old[FIRST_LINE_MAX];
    ssize_t got;
    do {
        got = pread(it->fd, old, want, 0);
    } while (got < 0 && errno == EINTR);
    return got == (ssize_t)want && memcmp(old, it->data, want) == 0;
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
    /* A spare has its mode already: no call, and no event for the watch of ~/.sr. */
    if ((st.st_mode & 07777) != it->mode && fchmod(it->fd, it->mode) != 0) {
        it->err = errno ? errno : EIO;
        return;
    }
    if (it->swap && it->checksummed)
        it->same_run = same_run(it);
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
            /* An early exchange's file was never synced on its own. */
            int err = dirs && it->early ? sync_retry(fsync, it->fd) : 0;
            if (!err)
                err = sync_retry(fsync, fd);
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

/* A checksummed file written over its spare takes its name at once, with
 * no sync before: its reader checks the file's first line and, should a
 * crash have left the file half written, or not written at all (the old
 * spare's text, an earlier write of the same run), reads the spare, which
 * holds the last durable text. Only over a spare of the same run (see
 * same_run): the reader could not tell another run's text for an old
 * one. As the user, right after stage. 0, or the errno; where there is
 * nothing to exchange with (a first write, a filesystem without
 * exchange) the item stays staged, to be synced and renamed. */
static int
publish_early(item_t *it)
{
    if (renameat2(it->sr, it->tmp, it->sr, it->name, RENAME_EXCHANGE) == 0) {
        it->staged = 0;
        it->early = 1;
        return 0;
    }
    if (errno == ENOENT || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)
        return 0;
    return errno ? errno : EIO;
}

/* The batch, with the GIL released: 0, or -1 when the thread's file
 * identity could not be put back (the caller must stop the thread; the
 * fds are closed, but no file is touched under an unknown identity).
 * Two sync rounds (the staged files, then the renames), or one where
 * every file was exchanged early (publish_early): a batch of a
 * registrar's files under load, whose every user has a spare. */
static int
write_batch(item_t *items, Py_ssize_t n)
{
    int rc = -1;
    int late = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        item_t *it = &items[i];
        if (act_as(it->uid, it->gid) != 0)
            it->err = EPERM;
        else
            stage(it);
        if (!it->err && it->checksummed && it->swap && it->same_run)
            it->err = publish_early(it);
        if (!it->err && it->staged)
            late = 1;
        if (settle(it) != 0)
            goto out;
    }
    if (late) {
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
"Write each (home, uid, gid, tmp, spare, name, data, mode[, checksummed])\n"
"as ~/.sr/<name>, durably, in one release of the GIL: stage every file\n"
"(over the spare, or as tmp when spare is empty or unfit), syncfs, swap\n"
"with the spare or rename, syncfs. A checksummed file (its reader checks\n"
"its first line and reads the spare when it fails) is swapped with an\n"
"existing spare as soon as it is staged: a batch of such files costs one\n"
"syncfs.\n"
"One int per item: 0 once the file is durable in place,\n"
"else the errno of what stopped it, with its old file untouched and no\n"
"temporary file (nor spare) left. Root only; the thread's file identity\n"
"must be root's.");

/* Fill items[0..n) from the tuples of seq (see write_batch_doc); 0, or -1
 * with an exception set. The strings stay borrowed from seq's bytes. */
static int
parse_items(PyObject *seq, item_t *items, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        item_t *it = &items[i];
        unsigned int uid, gid, mode;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(seq, i), "yIIyyyy#I|p:write_batch",
                              &it->home, &uid, &gid, &it->tmp, &it->spare, &it->name,
                              &it->data, &it->size, &mode, &it->checksummed))
            return -1;
        if (uid == 0 || uid == (unsigned int)-1 || gid == (unsigned int)-1
                || (mode & ~0644u) || strchr(it->name, '/') || strchr(it->tmp, '/')
                || strchr(it->spare, '/') || !strcmp(it->spare, it->name)
                || !strcmp(it->tmp, it->name) || !*it->tmp || !*it->name) {
            PyErr_SetString(PyExc_ValueError, "write_batch: not a file this path writes");
            return -1;
        }
        it->uid = (uid_t)uid;
        it->gid = (gid_t)gid;
        it->mode = (mode_t)mode;
        it->sr = -1;
        it->fd = -1;
    }
    return 0;
}

/* Whether this thread may run a batch: root, acting as root. */
static int
check_root(void)
{
    if (geteuid() != 0 || setfsuid((uid_t)-1) != 0 || setfsgid((gid_t)-1) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "write_batch: needs root, acting as root");
        return -1;
    }
    return 0;
}

static PyObject *
codes_of(item_t *items, Py_ssize_t n)
{
    PyObject *result = PyList_New(n);
    if (result == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *code = PyLong_FromLong(items[i].err);
        if (code == NULL) {
            Py_DECREF(result);
            return NULL;
        }
        PyList_SET_ITEM(result, i, code);
    }
    return result;
}

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
    /* The tuple holds the bytes objects for as long as seq lives. */
    if (parse_items(seq, items, n) != 0 || check_root() != 0)
        goto done;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = write_batch(items, n);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        PyErr_SetString(PyExc_RuntimeError,
                        "could not restore the thread's filesystem identity");
        goto done;
    }
    result = codes_of(items, n);
done:
    PyMem_Free(items);
    Py_DECREF(seq);
    return result;
}

/* ------------------------------------------------------------ Writer
 *
 * A queue of batches and the thread that writes them, in the order given,
 * without the GIL: the event loop hands a batch over (submit) and learns
 * of the batches written by reading an eventfd (fileno, collect). A worker
 * thread that ran each batch in a call of write_batch took the GIL three
 * times per batch (woken, back from the batch, handing the answer over),
 * and each time waited for the event loop to let it go: that was most of
 * the time a group commit took under load, and much of its CPU. serve()
 * is that thread's body; it comes back to Python only for a batch that
 * Python must finish (a file this path did not write, or one marked so at
 * submit) and at close.
 */

typedef struct batch {
    struct batch *next;
    long long ticket;
    Py_ssize_t n;
    int whole;       /* every file of the job is in the batch */
    int rc;          /* write_batch's */
    item_t *items;
    char *strings;   /* what the items' strings point into */
} batch_t;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t lock;
    pthread_cond_t wake;
    batch_t *todo, *todo_tail;   /* submitted, not yet taken */
    batch_t *done, *done_tail;   /* written whole, not yet collected */
    int efd;
    int closing;
} WriterObject;

static void
free_batch(batch_t *b)
{
    if (b == NULL)
        return;
    PyMem_RawFree(b->items);
    PyMem_RawFree(b->strings);
    PyMem_RawFree(b);
}

static void
push(batch_t **head, batch_t **tail, batch_t *b)
{
    b->next = NULL;
    if (*tail)
        (*tail)->next = b;
    else
        *head = b;
    *tail = b;
}

static batch_t *
pop(batch_t **head, batch_t **tail)
{
    batch_t *b = *head;
    if (b) {
        *head = b->next;
        if (*head == NULL)
            *tail = NULL;
        b->next = NULL;
    }
    return b;
}

static PyObject *
Writer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, ":Writer", kwlist))
        return NULL;
    WriterObject *self = (WriterObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (self->efd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(self);
        return NULL;
    }
    pthread_mutex_init(&self->lock, NULL);
    pthread_cond_init(&self->wake, NULL);
    return (PyObject *)self;
}

static void
Writer_dealloc(WriterObject *self)
{
    /* No thread serves: it would hold a reference. */
    batch_t *b;
    while ((b = pop(&self->todo, &self->todo_tail)) != NULL)
        free_batch(b);
    while ((b = pop(&self->done, &self->done_tail)) != NULL)
        free_batch(b);
    if (self->efd >= 0) {
        close(self->efd);
        pthread_mutex_destroy(&self->lock);
        pthread_cond_destroy(&self->wake);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* A copy of seq's items that outlives seq: the strings in one block. */
static batch_t *
copy_batch(PyObject *seq, int whole)
{
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    item_t *parsed = PyMem_Calloc(n ? (size_t)n : 1, sizeof(item_t));
    if (parsed == NULL)
        return (batch_t *)PyErr_NoMemory();
    batch_t *b = NULL;
    if (parse_items(seq, parsed, n) != 0)
        goto out;
    size_t size = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        size += strlen(parsed[i].home) + strlen(parsed[i].tmp) + strlen(parsed[i].spare)
                + strlen(parsed[i].name) + 4 + (size_t)parsed[i].size;
    b = PyMem_RawCalloc(1, sizeof(batch_t));
    if (b == NULL || (b->items = PyMem_RawCalloc(n ? (size_t)n : 1, sizeof(item_t))) == NULL
            || (b->strings = PyMem_RawMalloc(size ? size : 1)) == NULL) {
        free_batch(b);
        b = NULL;
        PyErr_NoMemory();
        goto out;
    }
    char *p = b->strings;
#define COPY(field) do { size_t k = strlen(parsed[i].field) + 1; \
        memcpy(p, parsed[i].field, k); it->field = p; p += k; } while (0)
    for (Py_ssize_t i = 0; i < n; i++) {
        item_t *it = &b->items[i];
        *it = parsed[i];
        COPY(home);
        COPY(tmp);
        COPY(spare);
        COPY(name);
        memcpy(p, parsed[i].data, (size_t)parsed[i].size);
        it->data = p;
        p += parsed[i].size;
    }
#undef COPY
    b->n = n;
    b->whole = whole;
out:
    PyMem_Free(parsed);
    return b;
}

PyDoc_STRVAR(Writer_submit_doc,
"submit(ticket, items, whole, /) -> None\n--\n\n"
"Queue a batch of write_batch's items for the serving thread, under the\n"
"caller's ticket (the caller records it first: the batch may be written\n"
"before this returns). Without whole, serve() hands the batch back to\n"
"Python once written.");

static PyObject *
Writer_submit(WriterObject *self, PyObject *args)
{
    PyObject *arg;
    long long ticket;
    int whole;
    if (!PyArg_ParseTuple(args, "LOp:submit", &ticket, &arg, &whole))
        return NULL;
    PyObject *seq = PySequence_Tuple(arg);
    if (seq == NULL)
        return NULL;
    batch_t *b = copy_batch(seq, whole);
    Py_DECREF(seq);
    if (b == NULL)
        return NULL;
    pthread_mutex_lock(&self->lock);
    if (self->closing) {
        pthread_mutex_unlock(&self->lock);
        free_batch(b);
        PyErr_SetString(PyExc_RuntimeError, "the writer is closed");
        return NULL;
    }
    b->ticket = ticket;
    push(&self->todo, &self->todo_tail, b);
    pthread_cond_signal(&self->wake);
    pthread_mutex_unlock(&self->lock);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(Writer_serve_doc,
"serve() -> tuple[int, list[int] | None] | None\n--\n\n"
"The serving thread's loop: write each batch submitted, in order, with the\n"
"GIL released; a batch written whole goes to collect(). Returns a batch\n"
"Python must finish, as (ticket, codes): a file not written (code not 0)\n"
"or a batch not submitted whole. codes is None when the thread's file\n"
"identity could not be put back: the thread must end. None once closed\n"
"and every batch submitted before is written. Root only.");

static PyObject *
Writer_serve(WriterObject *self, PyObject *Py_UNUSED(ignored))
{
    if (check_root() != 0)
        return NULL;
    batch_t *back = NULL;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->lock);
    for (;;) {
        while (self->todo == NULL && !self->closing)
            pthread_cond_wait(&self->wake, &self->lock);
        batch_t *b = pop(&self->todo, &self->todo_tail);
        if (b == NULL)
            break;  /* closing, and nothing left */
        pthread_mutex_unlock(&self->lock);
        b->rc = write_batch(b->items, b->n);
        int clean = b->rc == 0 && b->whole;
        for (Py_ssize_t i = 0; clean && i < b->n; i++)
            clean = b->items[i].err == 0;
        pthread_mutex_lock(&self->lock);
        if (!clean) {
            back = b;
            break;
        }
        push(&self->done, &self->done_tail, b);
        uint64_t one = 1;
        /* Only fails when the counter is full: it is readable then anyway. */
        (void)!write(self->efd, &one, sizeof one);
    }
    pthread_mutex_unlock(&self->lock);
    Py_END_ALLOW_THREADS
    if (back == NULL)
        Py_RETURN_NONE;
    PyObject *codes = back->rc == 0 ? codes_of(back->items, back->n) : Py_NewRef(Py_None);
    PyObject *result = codes == NULL ? NULL : Py_BuildValue("(LN)", back->ticket, codes);
    free_batch(back);
    return result;
}

PyDoc_STRVAR(Writer_collect_doc,
"collect() -> list[int]\n--\n\n"
"The tickets of the batches written whole since the last call, in order.");

static PyObject *
Writer_collect(WriterObject *self, PyObject *Py_UNUSED(ignored))
{
    uint64_t count;
    (void)!read(self->efd, &count, sizeof count);
    pthread_mutex_lock(&self->lock);
    batch_t *list = self->done;
    self->done = self->done_tail = NULL;
    pthread_mutex_unlock(&self->lock);
    PyObject *result = PyList_New(0);
    while (list != NULL) {
        batch_t *b = list;
        list = b->next;
        if (result != NULL) {
            PyObject *ticket = PyLong_FromLongLong(b->ticket);
            if (ticket == NULL || PyList_Append(result, ticket) != 0)
                Py_CLEAR(result);
            Py_XDECREF(ticket);
        }
        free_batch(b);
    }
    return result;
}

PyDoc_STRVAR(Writer_close_doc,
"close() -> None\n--\n\n"
"Take no more batches; serve() returns once those queued are written.");

static PyObject *
Writer_close(WriterObject *self, PyObject *Py_UNUSED(ignored))
{
    pthread_mutex_lock(&self->lock);
    self->closing = 1;
    pthread_cond_broadcast(&self->wake);
    pthread_mutex_unlock(&self->lock);
    Py_RETURN_NONE;
}

static PyObject *
Writer_fileno(WriterObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(self->efd);
}

static PyMethodDef Writer_methods[] = {
    {"submit", (PyCFunction)Writer_submit, METH_VARARGS, Writer_submit_doc},
    {"serve", (PyCFunction)Writer_serve, METH_NOARGS, Writer_serve_doc},
    {"collect", (PyCFunction)Writer_collect, METH_NOARGS, Writer_collect_doc},
    {"close", (PyCFunction)Writer_close, METH_NOARGS, Writer_close_doc},
    {"fileno", (PyCFunction)Writer_fileno, METH_NOARGS,
     "fileno() -> int\n--\n\nThe eventfd that is readable when collect() has tickets."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "srfs.files._homewrite.Writer",
    .tp_basicsize = sizeof(WriterObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Writer()\n--\n\nBatches of write_batch's items, written in order by the "
              "thread that calls serve(), without the GIL.",
    .tp_new = Writer_new,
    .tp_dealloc = (destructor)Writer_dealloc,
    .tp_methods = Writer_methods,
};

static PyMethodDef methods[] = {
    {"write_batch", py_write_batch, METH_O, write_batch_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "srfs.files._homewrite",
    .m_doc = "write_files' common case with the GIL released once per batch, and a "
             "thread that writes such batches in order without the GIL (Writer).",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__homewrite(void)
{
    if (PyType_Ready(&WriterType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Writer", (PyObject *)&WriterType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
