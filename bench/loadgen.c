/* loadgen: a small epoll load generator for TCP echo servers.
 *
 * Modes (-m):
 *   pingpong  each connection sends SIZE bytes, waits for the whole echo,
 *             records the latency, and repeats; after WARMUP seconds the
 *             counters reset and DURATION seconds are measured.
 *   bulk      each connection streams continuously (at most LIMIT bytes in
 *             flight) and reads back what the server echoes; measures MB/s.
 *   idle      opens CONNS connections, checks each one with a 1-byte round
 *             trip, prints a "ready" line, then holds them open until stdin
 *             reaches EOF (or HOLD seconds pass) and closes them.
 *
 * Every mode first connects in batches and does one 1-byte round trip on each
 * connection, so the server has accepted all of them before anything is
 * measured. The echo is checked byte for byte; a mismatch, a reset or an early
 * EOF counts as an error. Connections are closed with SO_LINGER 0 (a reset),
 * so repeated runs leave no TIME_WAIT sockets behind.
 *
 * Output: one JSON line on stdout. Exit status 0, or 1 on a usage or setup
 * error (a failed connect counts as an error and also exits 1).
 *
 * Build: cc -O2 -o loadgen loadgen.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 250            /* connections opened before checking them */
#define CHUNK 65536          /* bulk: bytes per send() and recv() */
#define PATTERN_PERIOD 251   /* a prime, so chunk boundaries never line up */

enum { PINGPONG, BULK, IDLE };

struct conn {
    int fd;
    int dead;
    int want_out;            /* EPOLLOUT is registered */
    size_t sent, recvd;      /* pingpong: within the current message */
    uint64_t t0;             /* pingpong: when the current message was started */
    uint64_t out_off, in_off; /* bulk: stream offsets */
};

static const char *host = "127.0.0.1";
static int port = 0, nconns = 1, mode = PINGPONG;
static size_t msg_size = 64, bulk_limit = 1 << 20;
static int busy_poll = 0;
static double warmup = 1.0, duration = 3.0, hold = 3600.0, setup_timeout = 60.0;

static struct conn *conns;
static int epfd;
static unsigned char *pattern;   /* PATTERN_PERIOD + max(CHUNK, msg_size) bytes of i % 251 */
static unsigned char *rbuf;
static long errors;
static char first_error[256];

static uint32_t *lat;            /* pingpong latencies in ns, during measurement */
static size_t nlat, caplat;
static uint64_t round_trips, bytes_echoed;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void fail_conn(struct conn *c, const char *what, int err)
{
    if (c->dead)
        return;
    errors++;
    if (!first_error[0])
        snprintf(first_error, sizeof first_error, "%s: %s", what, err ? strerror(err) : "");
    c->dead = 1;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    struct linger lg = {1, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(c->fd);
    c->fd = -1;
}

static void set_out(struct conn *c, int want)
{
    if (c->want_out == want || c->dead)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = want;
}

static void raise_nofile(int need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rlim_t want = (rlim_t)need;
    if (rl.rlim_cur >= want)
        return;
    if (rl.rlim_max < want) {
        struct rlimit r2 = {want, want};
        if (setrlimit(RLIMIT_NOFILE, &r2) == 0)
            return;
        want = rl.rlim_max;
    }
    rl.rlim_cur = want;
    setrlimit(RLIMIT_NOFILE, &rl);
}

/* Open one blocking-connect socket, then make it non-blocking. */
static int open_conn(struct sockaddr_in *sa)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv); /* bounds connect() */
    if (connect(fd, (struct sockaddr *)sa, sizeof *sa) != 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

/* Connect conns[lo..hi) and do one 1-byte round trip on each. */
static int connect_batch(struct sockaddr_in *sa, int lo, int hi, uint64_t deadline)
{
    for (int i = lo; i < hi; i++) {
        struct conn *c = &conns[i];
        memset(c, 0, sizeof *c);
        int fd = open_conn(sa);
        if (fd < 0) {
            c->fd = -1;
            c->dead = 1;
            errors++;
            if (!first_error[0])
                snprintf(first_error, sizeof first_error, "connect #%d: %s", i, strerror(-fd));
            return -1;
        }
        c->fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
        if (send(fd, "h", 1, 0) != 1)
            fail_conn(c, "handshake send", errno);
    }
    int waiting = 0;
    for (int i = lo; i < hi; i++)
        waiting += !conns[i].dead;
    struct epoll_event evs[256];
    while (waiting > 0) {
        int64_t left_ms = ((int64_t)deadline - (int64_t)now_ns()) / 1000000;
        if (left_ms <= 0) {
            errors += waiting;
            if (!first_error[0])
                snprintf(first_error, sizeof first_error, "handshake: %d connections got no echo in time", waiting);
            return -1;
        }
        int n = epoll_wait(epfd, evs, 256, (int)(left_ms > 1000 ? 1000 : left_ms));
        for (int k = 0; k < n; k++) {
            struct conn *c = evs[k].data.ptr;
            if (c->dead || c->recvd)
                continue;
            char b;
            ssize_t r = recv(c->fd, &b, 1, 0);
            if (r == 1 && b == 'h') {
                c->recvd = 1;
                waiting--;
            } else if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
                continue;
            } else {
                fail_conn(c, r == 0 ? "handshake: EOF" : r < 0 ? "handshake recv" : "handshake: wrong byte", r < 0 ? errno : 0);
                waiting--;
            }
        }
    }
    for (int i = lo; i < hi; i++)
        conns[i].recvd = 0;
    return 0;
}

static void record_latency(uint64_t ns)
{
    if (nlat == caplat) {
        caplat = caplat ? caplat * 2 : 1 << 16;
        lat = realloc(lat, caplat * sizeof *lat);
        if (!lat) {
            perror("realloc");
            exit(1);
        }
    }
    lat[nlat++] = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
}

/* pingpong: push out the rest of the current message. */
static void pp_send(struct conn *c)
{
    while (c->sent < msg_size) {
        ssize_t n = send(c->fd, pattern + c->sent, msg_size - c->sent, MSG_NOSIGNAL);
        if (n > 0) {
            c->sent += (size_t)n;
        } else if (n < 0 && errno == EAGAIN) {
            set_out(c, 1);
            return;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            fail_conn(c, "send", errno);
            return;
        }
    }
    set_out(c, 0);
}

static void pp_start(struct conn *c)
{
    c->sent = c->recvd = 0;
    c->t0 = now_ns();
    pp_send(c);
}

static void pp_event(struct conn *c, uint32_t events, int measuring)
{
    if (events & EPOLLOUT)
        pp_send(c);
    if (c->dead || !(events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
        return;
    for (;;) {
        size_t want = msg_size - c->recvd;
        ssize_t n = recv(c->fd, rbuf, want, 0);
        if (n > 0) {
            if (memcmp(rbuf, pattern + c->recvd, (size_t)n) != 0) {
                fail_conn(c, "echo mismatch", 0);
                return;
            }
            c->recvd += (size_t)n;
            if (c->recvd > c->sent) {
                fail_conn(c, "echo ahead of request", 0);
                return;
            }
            if (c->recvd == msg_size) {
                if (measuring) {
                    round_trips++;
                    record_latency(now_ns() - c->t0);
                }
                pp_start(c);
                return;
            }
        } else if (n == 0) {
            fail_conn(c, "EOF", 0);
            return;
        } else if (errno == EAGAIN) {
            return;
        } else if (errno != EINTR) {
            fail_conn(c, "recv", errno);
            return;
        }
    }
}

/* bulk: send while fewer than bulk_limit bytes are in flight. */
static void bulk_send(struct conn *c)
{
    while (c->out_off - c->in_off < bulk_limit) {
        size_t room = bulk_limit - (size_t)(c->out_off - c->in_off);
        size_t len = room < CHUNK ? room : CHUNK;
        ssize_t n = send(c->fd, pattern + c->out_off % PATTERN_PERIOD, len, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (uint64_t)n;
        } else if (n < 0 && errno == EAGAIN) {
            set_out(c, 1);
            return;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            fail_conn(c, "send", errno);
            return;
        }
    }
    set_out(c, 0); /* the window is full: the next read reopens it */
}

static void bulk_event(struct conn *c, uint32_t events, int measuring)
{
    if (events & EPOLLOUT)
        bulk_send(c);
    if (c->dead || !(events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
        return;
    for (int rounds = 0; rounds < 4; rounds++) {
        ssize_t n = recv(c->fd, rbuf, CHUNK, 0);
        if (n > 0) {
            if (c->in_off + (uint64_t)n > c->out_off ||
                memcmp(rbuf, pattern + c->in_off % PATTERN_PERIOD, (size_t)n) != 0) {
                fail_conn(c, "echo mismatch", 0);
                return;
            }
            c->in_off += (uint64_t)n;
            if (measuring)
                bytes_echoed += (uint64_t)n;
        } else if (n == 0) {
            fail_conn(c, "EOF", 0);
            return;
        } else if (errno == EAGAIN) {
            break;
        } else if (errno != EINTR) {
            fail_conn(c, "recv", errno);
            return;
        }
    }
    if (!c->want_out)
        bulk_send(c);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double percentile_us(double p)
{
    if (!nlat)
        return 0.0;
    size_t i = (size_t)(p * (double)(nlat - 1) + 0.5);
    return lat[i] / 1000.0;
}

static void close_all(void)
{
    struct linger lg = {1, 0};
    for (int i = 0; i < nconns; i++) {
        if (conns[i].fd >= 0 && !conns[i].dead) {
            setsockopt(conns[i].fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            close(conns[i].fd);
        }
    }
}

static void json_escape(const char *s, char *out, size_t cap)
{
    size_t j = 0;
    for (; *s && j + 2 < cap; s++) {
        if (*s == '"' || *s == '\\')
            out[j++] = '\\';
        out[j++] = (*s >= 32) ? *s : ' ';
    }
    out[j] = 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen -p PORT [-H HOST] [-m pingpong|bulk|idle] [-c CONNS] [-s SIZE]\n"
            "               [-w WARMUP_S] [-d DURATION_S] [-l BULK_LIMIT] [-t HOLD_S] [-T SETUP_TIMEOUT_S]\n");
    exit(1);
}

int main(int argc, char **argv)
{
    int opt;
    while ((opt = getopt(argc, argv, "H:p:m:c:s:w:d:l:t:T:b")) != -1) {
        switch (opt) {
        case 'H': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'm':
            if (!strcmp(optarg, "pingpong")) mode = PINGPONG;
            else if (!strcmp(optarg, "bulk")) mode = BULK;
            else if (!strcmp(optarg, "idle")) mode = IDLE;
            else usage();
            break;
        case 'c': nconns = atoi(optarg); break;
        case 's': msg_size = (size_t)atol(optarg); break;
        case 'w': warmup = atof(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'l': bulk_limit = (size_t)atol(optarg); break;
        case 't': hold = atof(optarg); break;
        case 'T': setup_timeout = atof(optarg); break;
        case 'b': busy_poll = 1; break;
        default: usage();
        }
    }
    if (port <= 0 || nconns <= 0 || msg_size == 0 || duration <= 0 || bulk_limit == 0)
        usage();

    raise_nofile(nconns + 64);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "loadgen: %s is not an IPv4 address\n", host);
        return 1;
    }
    size_t plen = PATTERN_PERIOD + (msg_size > CHUNK ? msg_size : CHUNK);
    pattern = malloc(plen);
    rbuf = malloc(msg_size > CHUNK ? msg_size : CHUNK);
    conns = calloc((size_t)nconns, sizeof *conns);
    epfd = epoll_create1(0);
    if (!pattern || !rbuf || !conns || epfd < 0) {
        perror("loadgen: setup");
        return 1;
    }
    for (size_t i = 0; i < plen; i++)
        pattern[i] = (unsigned char)(i % PATTERN_PERIOD);

    uint64_t t_setup = now_ns();
    uint64_t setup_deadline = t_setup + (uint64_t)(setup_timeout * 1e9);
    int ok = 0;
    for (int lo = 0; lo < nconns; lo += BATCH) {
        int hi = lo + BATCH < nconns ? lo + BATCH : nconns;
        if (connect_batch(&sa, lo, hi, setup_deadline) != 0) {
            for (int i = hi; i < nconns; i++)
                conns[i].fd = -1, conns[i].dead = 1;
            break;
        }
        ok = hi;
    }
    double setup_s = (double)(now_ns() - t_setup) / 1e9;
    char err[600];
    if (ok < nconns) {
        json_escape(first_error, err, sizeof err);
        printf("{\"mode\":\"%s\",\"conns\":%d,\"connected\":%d,\"errors\":%ld,\"first_error\":\"%s\",\"setup_s\":%.3f}\n",
               mode == IDLE ? "idle" : mode == BULK ? "bulk" : "pingpong", nconns, ok, errors, err, setup_s);
        fflush(stdout);
        close_all();
        return 1;
    }

    if (mode == IDLE) {
        int alive = 0;
        for (int i = 0; i < nconns; i++)
            alive += !conns[i].dead;
        json_escape(first_error, err, sizeof err);
        printf("{\"mode\":\"idle\",\"conns\":%d,\"connected\":%d,\"ready\":true,\"errors\":%ld,\"first_error\":\"%s\",\"setup_s\":%.3f}\n",
               nconns, alive, errors, err, setup_s);
        fflush(stdout);
        struct pollfd pfd = {.fd = 0, .events = POLLIN};
        uint64_t until = now_ns() + (uint64_t)(hold * 1e9);
        char sink[256];
        while (now_ns() < until) {
            int r = poll(&pfd, 1, 200);
            if (r > 0) {
                ssize_t n = read(0, sink, sizeof sink);
                if (n <= 0)
                    break;
            }
        }
        close_all();
        return errors ? 1 : 0;
    }

    for (int i = 0; i < nconns; i++) {
        if (mode == PINGPONG)
            pp_start(&conns[i]);
        else
            bulk_send(&conns[i]);
    }
    struct epoll_event *evs = calloc(1024, sizeof *evs);
    uint64_t t_begin = now_ns();
    uint64_t t_measure = t_begin + (uint64_t)(warmup * 1e9);
    uint64_t t_end = t_measure + (uint64_t)(duration * 1e9);
    int measuring = warmup <= 0;
    long errors_before = errors;
    uint64_t t_start = measuring ? t_begin : 0;
    for (;;) {
        int n = epoll_wait(epfd, evs, 1024, busy_poll ? 0 : 50);
        for (int k = 0; k < n; k++) {
            struct conn *c = evs[k].data.ptr;
            if (c->dead)
                continue;
            if (mode == PINGPONG)
                pp_event(c, evs[k].events, measuring);
            else
                bulk_event(c, evs[k].events, measuring);
        }
        uint64_t t = now_ns();
        if (!measuring && t >= t_measure) {
            measuring = 1;
            t_start = t;
            errors_before = errors;
        }
        if (t >= t_end)
            break;
    }
    double elapsed = (double)(now_ns() - t_start) / 1e9;
    close_all();
    qsort(lat, nlat, sizeof *lat, cmp_u32);
    double mean = 0;
    for (size_t i = 0; i < nlat; i++)
        mean += lat[i];
    mean = nlat ? mean / (double)nlat / 1000.0 : 0.0;
    json_escape(first_error, err, sizeof err);
    printf("{\"mode\":\"%s\",\"conns\":%d,\"size\":%zu,\"warmup_s\":%.3f,\"duration_s\":%.4f,"
           "\"round_trips\":%llu,\"rps\":%.1f,\"p50_us\":%.2f,\"p99_us\":%.2f,\"mean_us\":%.2f,"
           "\"bytes\":%llu,\"mb_per_s\":%.2f,\"errors\":%ld,\"errors_in_warmup\":%ld,"
           "\"first_error\":\"%s\",\"setup_s\":%.3f}\n",
           mode == BULK ? "bulk" : "pingpong", nconns, msg_size, warmup, elapsed,
           (unsigned long long)round_trips, round_trips / elapsed, percentile_us(0.50), percentile_us(0.99), mean,
           (unsigned long long)bytes_echoed, bytes_echoed / elapsed / 1e6, errors, errors_before, err, setup_s);
    return errors ? 1 : 0;
}
