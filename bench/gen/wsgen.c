/*
 * wsgen - epoll WebSocket load generator for the Rustorium benchmarks.
 *
 * Why C and one epoll loop: the generator must not be the bottleneck.  A
 * Python or Node client costs ~9 us per received message, more than the
 * server under test; this loop costs a few us per delivery, mostly kernel
 * receive time.  It reports its own CPU share so a run can show that.
 *
 * One process drives all connections to 127.0.0.1 (loopback only).  Modes:
 *
 *   fanout     connect N clients, subscribe each to --symbols, wait for all
 *              confirmations, warm up, then count "update" frames for
 *              --duration seconds.  With --latency, every update's
 *              data.timestamp (ISO 8601 UTC, wall clock) is compared with
 *              the receive time.
 *   idle       read the server's RSS, connect N clients (handshake only),
 *              wait --settle seconds, read the RSS again.
 *   cmd        N clients keep --depth requests of --cmd-type in flight and
 *              count replies of type --expect per second.
 *   reconnect  N clients subscribe and receive an update, then all are
 *              dropped at once and reconnect with a "reconnect" message;
 *              measures the time until every one got reconnect_confirmation
 *              and the updates it announced as replayed.  With --kill-pid,
 *              that process (the clients' node) is SIGKILLed at the drop,
 *              and with --reconnect-port the clients reconnect to another
 *              node: a cluster's node dies and its clients resume elsewhere.
 *
 * With --ready-signal, SIGUSR2 goes to --server-pid once every client is set
 * up (see bench/node/server.js --wait-ready).
 *
 * With --sources K, client sockets are bound round-robin to the source
 * addresses 127.0.0.1 ... 127.0.0.K (the port is still chosen at connect()
 * time, IP_BIND_ADDRESS_NO_PORT, so ports are shared between destinations):
 * one source address has only ~28,000 ephemeral ports towards one server
 * port.
 *
 * With --sync (fanout mode), several generator processes can measure one
 * server together (one process is capped by the open-file limit too): after
 * setup the process prints "READY {json}" on stdout and keeps serving its
 * connections until a line "GO T0 T1 DRAIN" arrives on stdin (T0, T1: wall
 * clock in microseconds; DRAIN: seconds).  The window is then defined by the
 * updates' publish time (data.timestamp in [T0, T1)), not by their arrival:
 * every such update is counted per message id (how many of this process's
 * connections received it) and its latency goes into a log-linear histogram
 * (0.1% resolution), and the process keeps receiving for DRAIN seconds after
 * T1 so that the late tail of the last burst is counted too.  The harness
 * sums the id counts (misses = open connections x ids - receipts) and the
 * histograms of all processes.
 *
 * With --server-pid, the server's utime+stime (from /proc/PID/stat) is read
 * at the exact start and end of the measurement window, so the harness can
 * divide server CPU by deliveries counted over the same interval.  With
 * --aux-pid, another process's CPU (the Redis the server uses as its broker)
 * is read at the same instants and reported as aux_cpu_s.
 *
 * Output: one JSON object on stdout; progress messages go to stderr.
 * Every phase is bounded in time (--setup-timeout, --duration, ...).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { M_FANOUT, M_IDLE, M_CMD, M_RECONNECT };
enum { S_FREE, S_CONNECTING, S_HS, S_OPEN, S_CLOSED, S_FAILED };

#define RBUF_SIZE (512 * 1024)
#define LAT_BUCKETS 2000000 /* 1 us resolution up to 2 s, then overflow */
#define MAX_CODES 8

struct conn {
    int fd;
    uint8_t state;
    uint8_t confirmed;
    uint8_t done;
    uint8_t pass; /* 0 = first connection, 1 = reconnect pass */
    uint8_t got_conf; /* reconnect_confirmation received (pass 1) */
    int32_t replay_left; /* replayed updates still to arrive after it */
    uint32_t inflight;
    uint32_t next_req;
    uint64_t updates;
    char *pend; /* partial frame/handshake bytes carried to the next read */
    uint32_t pend_len, pend_cap;
    char *out; /* unsent bytes when the socket was full */
    uint32_t out_len, out_off;
    char last_id[40];
    char sub_id[48];
};

/* ---- options ---- */
static const char *o_host = "127.0.0.1";
static int o_port = 0;
static const char *o_path = "/v1";
static int o_mode = M_FANOUT;
static int o_conns = 100;
static const char *o_symbols = "TK0/USD";
static int o_latency = 0;
static double o_warmup = 1.0, o_duration = 5.0, o_setup_timeout = 60.0;
static double o_settle = 2.0;
static int o_conc = 64;
static int o_server_pid = 0;
static int o_aux_pid = 0;
static const char *o_cmd_type = "get_token_info";
static const char *o_cmd_data = "{}";
static const char *o_expect = "token_info";
static int o_depth = 1;
static double o_resume_timeout = 60.0;
static int o_ready_signal = 0;
static int o_sources = 1;
static int o_sync = 0;
static int o_reconnect_port = 0; /* reconnect pass: another node's port */
static int o_kill_pid = 0;       /* reconnect pass: SIGKILL this first */

/* ---- state ---- */
static struct conn *conns;
static int epfd;
static char *rbuf;
static int g_next_to_connect = 0; /* index of next conn to start */
static int g_pending = 0;         /* connections in CONNECTING/HS */
static int g_open = 0, g_failed = 0, g_closed_by_peer = 0;
static int g_confirms = 0, g_ready_conns = 0, g_reconf = 0, g_resume_err = 0;
static int g_confirmed_resume = 0; /* reconnect_confirmation received */
static int g_not_resumed = 0;      /* ... whose subscription was not "resumed" (expired) */
static int g_not_recovered = 0;    /* ... with "recovered": false */
static long long g_replayed_claimed = 0; /* sum of their "replayed" counts */
static double g_t_last_conf = 0;   /* when the last confirmation arrived */
static uint64_t g_updates = 0, g_update_bytes = 0, g_replies = 0, g_errors = 0, g_other = 0;
static uint64_t g_heartbeats = 0;
static int g_cmd_unavailable = 0;
static char g_sub_msg[4096];
static size_t g_sub_len;
static char code_name[MAX_CODES][40];
static uint64_t code_count[MAX_CODES];
static int n_codes = 0;
static uint32_t *lat_hist;
static uint64_t lat_n = 0, lat_over = 0, lat_neg = 0;
static int64_t lat_max = 0;
static int lat_on = 0;
static int64_t g_now_us_wall = 0; /* wall clock at the last read() */

/* ---- --sync: a window by publish time, shared by several processes ---- */
#define STDIN_TAG 0xffffffffu /* epoll data of stdin, not a connection index */
#define SLAT_SUB 1024         /* sub-buckets per power of two above 2 ms */
#define SLAT_BUCKETS (2048 + 30 * SLAT_SUB)
#define IDS_CAP (1 << 18)     /* message ids tracked per window (open addressing) */
static int g_go = 0;          /* GO received */
static int64_t g_t0 = 0, g_t1 = 0; /* window, wall clock us */
static double g_drain = 3.0;
static char g_stdin_buf[256];
static size_t g_stdin_len = 0;
static uint32_t *slat_hist;
static uint64_t slat_n = 0, slat_neg = 0;
static int64_t slat_max = 0;
static uint64_t *ids_key; /* message number + 1 (0 = empty) */
static uint32_t *ids_count;
static uint64_t ids_used = 0, ids_dropped = 0;
static uint64_t g_window_receipts = 0;

static void logmsg(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("wsgen: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int64_t wall_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static double self_cpu(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

/* Server utime+stime in seconds (all threads), or -1 if unavailable. */
static double proc_cpu(int pid) {
    char path[64], buf[2048];
    if (pid <= 0) return -1;
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return -1;
    unsigned long long ut = 0, st = 0;
    /* after ") " : state(3) ppid(4) ... utime(14) stime(15) */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / sysconf(_SC_CLK_TCK);
}

/* Server resident set size in KiB, or -1. */
static long proc_rss_kb(int pid) {
    char path[64], line[256];
    long kb = -1;
    if (pid <= 0) return -1;
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1) break;
    fclose(f);
    return kb;
}

/* Busy and total jiffies of one CPU from /proc/stat (to see interference). */
static void cpu_jiffies(int cpu, unsigned long long *busy, unsigned long long *total) {
    char line[512], name[16];
    *busy = *total = 0;
    snprintf(name, sizeof name, "cpu%d ", cpu);
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, name, strlen(name)) == 0) {
            unsigned long long v[10] = {0};
            sscanf(line + strlen(name), "%llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0],
                   &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]);
            for (int i = 0; i < 8; i++) *total += v[i];
            *busy = *total - v[3] - v[4]; /* minus idle, iowait */
            break;
        }
    }
    fclose(f);
}

/* ---- small JSON helpers (the server's JSON is flat enough for this) ---- */

/* Find the string value of "key" (given with quotes, e.g. "\"type\"").
 * Tolerates whitespace around the colon.  Returns pointer/length or NULL. */
static const char *json_str(const char *p, size_t n, const char *key, size_t *vlen) {
    size_t kl = strlen(key);
    const char *end = p + n;
    const char *k = memmem(p, n, key, kl);
    while (k) {
        const char *q = k + kl;
        while (q < end && (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')) q++;
        if (q < end && *q == ':') {
            q++;
            while (q < end && (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')) q++;
            if (q < end && *q == '"') {
                q++;
                const char *e = memchr(q, '"', end - q);
                if (!e) return NULL;
                *vlen = e - q;
                return q;
            }
            return NULL;
        }
        k = memmem(k + 1, end - (k + 1), key, kl);
    }
    return NULL;
}

/* Position just after "key": (whitespace skipped), or NULL. */
static const char *json_after_key(const char *p, size_t n, const char *key) {
    size_t kl = strlen(key);
    const char *end = p + n, *k = memmem(p, n, key, kl);
    while (k) {
        const char *q = k + kl;
        while (q < end && (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')) q++;
        if (q < end && *q == ':') {
            q++;
            while (q < end && (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')) q++;
            return q < end ? q : NULL;
        }
        k = memmem(k + 1, (size_t)(end - (k + 1)), key, kl);
    }
    return NULL;
}

/* 1 for true, 0 for false, -1 if "key" is absent or not a boolean. */
static int json_bool(const char *p, size_t n, const char *key) {
    const char *q = json_after_key(p, n, key);
    if (!q) return -1;
    if ((size_t)(p + n - q) >= 4 && memcmp(q, "true", 4) == 0) return 1;
    if ((size_t)(p + n - q) >= 5 && memcmp(q, "false", 5) == 0) return 0;
    return -1;
}

/* The non-negative integer value of "key", or -1. */
static long long json_int(const char *p, size_t n, const char *key) {
    const char *q = json_after_key(p, n, key), *end = p + n;
    if (!q || q >= end || *q < '0' || *q > '9') return -1;
    long long v = 0;
    while (q < end && *q >= '0' && *q <= '9') v = v * 10 + (*q++ - '0');
    return v;
}

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static int dig(const char *s, int n) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

/* Parse "YYYY-MM-DDTHH:MM:SS[.fraction](Z|+00:00)" to epoch microseconds. */
static int parse_iso_us(const char *s, size_t n, int64_t *out) {
    if (n < 19) return -1;
    int Y = dig(s, 4), M = dig(s + 5, 2), D = dig(s + 8, 2);
    int h = dig(s + 11, 2), mi = dig(s + 14, 2), se = dig(s + 17, 2);
    if (Y < 0 || M < 1 || D < 1 || h < 0 || mi < 0 || se < 0) return -1;
    int64_t us = 0;
    size_t i = 19;
    if (i < n && s[i] == '.') {
        int64_t scale = 100000;
        for (i++; i < n && s[i] >= '0' && s[i] <= '9'; i++) {
            us += (s[i] - '0') * scale;
            scale /= 10;
        }
    }
    int64_t days = days_from_civil(Y, (unsigned)M, (unsigned)D);
    *out = ((days * 24 + h) * 60 + mi) * 60000000LL + se * 1000000LL + us;
    return 0;
}

static void note_code(const char *c, size_t n) {
    if (n >= sizeof code_name[0]) n = sizeof code_name[0] - 1;
    for (int i = 0; i < n_codes; i++)
        if (strlen(code_name[i]) == n && memcmp(code_name[i], c, n) == 0) {
            code_count[i]++;
            return;
        }
    if (n_codes < MAX_CODES) {
        memcpy(code_name[n_codes], c, n);
        code_name[n_codes][n] = 0;
        code_count[n_codes++] = 1;
    }
}

/* ---- sending ---- */

static void want_write(struct conn *c, int on) {
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.u32 = (uint32_t)(c - conns)};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void conn_fail(struct conn *c, int peer);

/* Write bytes now if nothing is queued; queue the rest when the socket is full. */
static void raw_send(struct conn *c, const char *p, size_t n) {
    if (c->out_len == c->out_off) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                conn_fail(c, 1);
                return;
            }
            w = 0;
        }
        if ((size_t)w == n) return;
        p += w;
        n -= w;
        free(c->out);
        c->out = NULL;
        c->out_len = c->out_off = 0;
    }
    char *nb = realloc(c->out, c->out_len + n);
    if (!nb) abort();
    memcpy(nb + c->out_len, p, n);
    c->out = nb;
    c->out_len += n;
    want_write(c, 1);
}

static uint32_t mask_seed = 0x9e3779b9u;

/* Send one masked frame (clients must mask, RFC 6455 section 5.3). */
static void ws_send(struct conn *c, int opcode, const char *payload, size_t n) {
    char stackbuf[8192];
    size_t hl = n < 126 ? 2 : (n < 65536 ? 4 : 10);
    size_t tot = hl + 4 + n;
    char *f = tot <= sizeof stackbuf ? stackbuf : malloc(tot);
    if (!f) abort();
    f[0] = (char)(0x80 | opcode);
    if (n < 126) {
        f[1] = (char)(0x80 | n);
    } else if (n < 65536) {
        f[1] = (char)(0x80 | 126);
        f[2] = (char)(n >> 8);
        f[3] = (char)n;
    } else {
        f[1] = (char)(0x80 | 127);
        for (int i = 0; i < 8; i++) f[2 + i] = (char)((uint64_t)n >> (56 - 8 * i));
    }
    mask_seed = mask_seed * 1664525u + 1013904223u;
    unsigned char mk[4];
    memcpy(mk, &mask_seed, 4);
    memcpy(f + hl, mk, 4);
    for (size_t i = 0; i < n; i++) f[hl + 4 + i] = (char)(payload[i] ^ mk[i & 3]);
    raw_send(c, f, tot);
    if (f != stackbuf) free(f);
}

static void send_text(struct conn *c, const char *s, size_t n) { ws_send(c, 1, s, n); }

static void send_cmd(struct conn *c) {
    char m[4096];
    int n = snprintf(m, sizeof m, "{\"id\":\"%u\",\"type\":\"%s\",\"data\":%s}", ++c->next_req,
                     o_cmd_type, o_cmd_data);
    c->inflight++;
    send_text(c, m, (size_t)n);
}

/* ---- connection lifecycle ---- */

static void conn_reset(struct conn *c) {
    free(c->pend);
    free(c->out);
    c->pend = c->out = NULL;
    c->pend_len = c->pend_cap = c->out_len = c->out_off = 0;
}

static void conn_fail(struct conn *c, int peer) {
    if (c->state == S_CONNECTING || c->state == S_HS) g_pending--;
    if (c->state == S_OPEN) g_open--;
    if (c->state != S_CLOSED && c->state != S_FAILED) {
        if (c->state == S_OPEN && peer)
            g_closed_by_peer++;
        else
            g_failed++;
    }
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->state = c->state == S_OPEN ? S_CLOSED : S_FAILED;
    conn_reset(c);
}

static const char HS_KEY[] = "dGhlIHNhbXBsZSBub25jZQ==";

/* The port a connection goes to: the reconnect pass may go to another node. */
static int conn_port(const struct conn *c) {
    return c->pass == 1 && o_reconnect_port > 0 ? o_reconnect_port : o_port;
}

static void start_connect(struct conn *c) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        logmsg("socket: %s", strerror(errno));
        c->state = S_FAILED;
        g_failed++;
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (o_sources > 1) {
        /* Source address 127.0.0.(1 + i mod K); the port is picked by
         * connect() (IP_BIND_ADDRESS_NO_PORT), so it is only unique per
         * destination, like an unbound socket's. */
        struct sockaddr_in src = {.sin_family = AF_INET, .sin_port = 0};
        src.sin_addr.s_addr = htonl(0x7f000001u + (uint32_t)((c - conns) % o_sources));
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
            logmsg("bind 127.0.0.%d: %s", 1 + (int)((c - conns) % o_sources), strerror(errno));
            close(fd);
            c->state = S_FAILED;
            g_failed++;
            return;
        }
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)conn_port(c))};
    inet_pton(AF_INET, o_host, &sa.sin_addr);
    c->fd = fd;
    c->state = S_CONNECTING;
    g_pending++;
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u32 = (uint32_t)(c - conns)};
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
        logmsg("connect: %s", strerror(errno));
        conn_fail(c, 0);
    }
}

static void on_connected(struct conn *c) {
    int err = 0;
    socklen_t l = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
    if (err) {
        if (g_failed < 5) logmsg("connect failed: %s", strerror(err));
        conn_fail(c, 0);
        return;
    }
    char req[2048];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     o_path, o_host, conn_port(c), HS_KEY);
    c->state = S_HS;
    want_write(c, 0);
    raw_send(c, req, (size_t)n);
}

/* The connection is open: send what this mode sends first. */
static void on_open(struct conn *c) {
    c->state = S_OPEN;
    g_pending--;
    g_open++;
    if (c->pass == 1) {
        char m[512];
        int n = snprintf(m, sizeof m,
                         "{\"id\":\"r%d\",\"type\":\"reconnect\",\"data\":{\"last_message_id\":\"%s\","
                         "\"subscriptions\":[\"%s\"]}}",
                         (int)(c - conns), c->last_id, c->sub_id);
        send_text(c, m, (size_t)n);
        return;
    }
    if (o_mode == M_FANOUT || o_mode == M_RECONNECT) send_text(c, g_sub_msg, g_sub_len);
}

/* ---- receiving ---- */

/* A reconnected client is resumed once its confirmation and every update it
 * announced as replayed have arrived. */
static void resume_done(struct conn *c) {
    c->done = 1;
    g_reconf++;
}

/* Log-linear latency bucket: exact microseconds below 2048 us, then 1024
 * sub-buckets per power of two (0.1% resolution). */
static int slat_bucket(int64_t d) {
    if (d < 2048) return (int)d;
    int e = 63 - __builtin_clzll((unsigned long long)d); /* >= 11 */
    if (e > 40) return SLAT_BUCKETS - 1;
    return 2048 + (e - 11) * SLAT_SUB + (int)((d >> (e - 10)) - SLAT_SUB);
}

static int64_t slat_lower(int i) {
    if (i < 2048) return i;
    int e = 11 + (i - 2048) / SLAT_SUB;
    return (int64_t)((i - 2048) % SLAT_SUB + SLAT_SUB) << (e - 10);
}

/* The message number of "id":"msg_<n>", or -1. */
static long long msg_number(const char *p, size_t n) {
    size_t il;
    const char *id = json_str(p, n, "\"id\"", &il);
    if (!id || il < 5 || memcmp(id, "msg_", 4) != 0) return -1;
    long long v = 0;
    for (size_t i = 4; i < il; i++) {
        if (id[i] < '0' || id[i] > '9') return -1;
        v = v * 10 + (id[i] - '0');
    }
    return v;
}

/* --sync: an update published inside the window: its latency, and one more
 * receiver of its message id. */
static void sync_update(const char *p, size_t n) {
    size_t sl;
    const char *s = json_str(p, n, "\"timestamp\"", &sl);
    int64_t ts;
    if (!s || parse_iso_us(s, sl, &ts) != 0 || ts < g_t0 || ts >= g_t1) return;
    g_window_receipts++;
    int64_t d = g_now_us_wall - ts;
    if (d < 0) {
        slat_neg++;
        d = 0;
    }
    if (d > slat_max) slat_max = d;
    slat_hist[slat_bucket(d)]++;
    slat_n++;
    long long num = msg_number(p, n);
    if (num < 0) return;
    uint64_t key = (uint64_t)num + 1, h = key * 0x9e3779b97f4a7c15ull;
    for (uint32_t probe = 0; probe < IDS_CAP; probe++) {
        uint32_t i = (uint32_t)((h >> 40) + probe) & (IDS_CAP - 1);
        if (ids_key[i] == key) {
            ids_count[i]++;
            return;
        }
        if (ids_key[i] == 0) {
            if (ids_used >= IDS_CAP / 2) break; /* keep the table sparse */
            ids_key[i] = key;
            ids_count[i] = 1;
            ids_used++;
            return;
        }
    }
    ids_dropped++;
}

static void on_message(struct conn *c, const char *p, size_t n) {
    size_t tl;
    const char *t = json_str(p, n, "\"type\"", &tl);
    if (!t) {
        g_other++;
        return;
    }
#define IS(lit) (tl == sizeof(lit) - 1 && memcmp(t, lit, tl) == 0)
    if (IS("update")) {
        g_updates++;
        g_update_bytes += n;
        c->updates++;
        if (g_go) sync_update(p, n);
        if (lat_on) {
            size_t sl;
            const char *s = json_str(p, n, "\"timestamp\"", &sl);
            int64_t ts;
            if (s && parse_iso_us(s, sl, &ts) == 0) {
                int64_t d = g_now_us_wall - ts;
                if (d < 0) {
                    lat_neg++;
                    d = 0;
                }
                if (d > lat_max) lat_max = d;
                if (d >= LAT_BUCKETS)
                    lat_over++;
                else
                    lat_hist[d]++;
                lat_n++;
            }
        }
        if (o_mode == M_RECONNECT) {
            size_t il;
            const char *id = json_str(p, n, "\"id\"", &il);
            if (id && il < sizeof c->last_id) {
                memcpy(c->last_id, id, il);
                c->last_id[il] = 0;
            }
            if (c->pass == 0 && c->updates == 1 && c->confirmed) g_ready_conns++;
            if (c->pass == 1 && c->got_conf && !c->done && --c->replay_left <= 0) resume_done(c);
        }
    } else if (IS("subscription_confirmation")) {
        if (!c->confirmed) {
            c->confirmed = 1;
            g_confirms++;
            if (o_mode == M_RECONNECT) {
                size_t sl;
                const char *s = json_str(p, n, "\"subscription_id\"", &sl);
                if (s && sl < sizeof c->sub_id) {
                    memcpy(c->sub_id, s, sl);
                    c->sub_id[sl] = 0;
                }
                if (c->updates >= 1) g_ready_conns++;
            }
        }
    } else if (IS("heartbeat")) {
        static const char hb[] = "{\"type\":\"heartbeat_response\",\"data\":{}}";
        g_heartbeats++;
        send_text(c, hb, sizeof hb - 1);
    } else if (IS("error")) {
        size_t cl;
        const char *code = json_str(p, n, "\"code\"", &cl);
        g_errors++;
        if (code)
            note_code(code, cl);
        else
            note_code("?", 1);
        if (c->pass == 1 && !c->done) {
            c->done = 1;
            g_resume_err++;
        }
        if (o_mode == M_CMD && c->inflight) {
            c->inflight--;
            if (code && cl == 12 && memcmp(code, "unknown_type", 12) == 0) {
                g_cmd_unavailable = 1;
                c->done = 1;
            } else if (!c->done) {
                send_cmd(c);
            }
        }
    } else if (IS("reconnect_confirmation")) {
        if (c->pass == 1 && !c->got_conf && !c->done) {
            /* One subscription per client here, so the first "status",
             * "recovered" and "replayed" are those of that subscription (and
             * equal the totals). */
            size_t sl;
            const char *st = json_str(p, n, "\"status\"", &sl);
            c->got_conf = 1;
            g_confirmed_resume++;
            g_t_last_conf = mono();
            if (!st || sl != 7 || memcmp(st, "resumed", 7) != 0) g_not_resumed++;
            if (json_bool(p, n, "\"recovered\"") == 0) g_not_recovered++;
            long long r = json_int(p, n, "\"replayed\"");
            if (r > 0) g_replayed_claimed += r;
            c->replay_left = r > 0 ? (int32_t)r : 0;
            if (c->replay_left == 0) resume_done(c);
        }
    } else if (o_mode == M_CMD && tl == strlen(o_expect) && memcmp(t, o_expect, tl) == 0) {
        g_replies++;
        if (c->inflight) c->inflight--;
        if (!c->done) send_cmd(c);
    } else {
        g_other++;
    }
#undef IS
}

/* Parse complete frames in p[0..n); return bytes consumed. */
static size_t parse_frames(struct conn *c, char *p, size_t n) {
    size_t off = 0;
    while (n - off >= 2) {
        unsigned char b0 = (unsigned char)p[off], b1 = (unsigned char)p[off + 1];
        uint64_t len = b1 & 0x7f;
        size_t hl = 2;
        if (len == 126) {
            if (n - off < 4) break;
            len = ((unsigned char)p[off + 2] << 8) | (unsigned char)p[off + 3];
            hl = 4;
        } else if (len == 127) {
            if (n - off < 10) break;
            len = 0;
            for (int i = 0; i < 8; i++) len = (len << 8) | (unsigned char)p[off + 2 + i];
            hl = 10;
        }
        if (b1 & 0x80) hl += 4; /* server frames should not be masked; tolerate */
        if (len > (64u << 20)) {
            logmsg("frame too large (%llu), dropping connection", (unsigned long long)len);
            conn_fail(c, 1);
            return n;
        }
        if (n - off < hl + len) break;
        char *pl = p + off + hl;
        if (b1 & 0x80) {
            unsigned char *mk = (unsigned char *)pl - 4;
            for (uint64_t i = 0; i < len; i++) pl[i] ^= mk[i & 3];
        }
        int op = b0 & 0x0f;
        if (op == 1 || op == 2 || op == 0) {
            on_message(c, pl, (size_t)len);
        } else if (op == 9) {
            ws_send(c, 10, pl, (size_t)len);
        } else if (op == 8) {
            ws_send(c, 8, pl, len >= 2 ? 2 : 0);
            conn_fail(c, 1);
            return n;
        }
        if (c->state != S_OPEN) return n;
        off += hl + (size_t)len;
    }
    return off;
}

static void on_readable(struct conn *c) {
    size_t have = c->pend_len;
    if (have) memcpy(rbuf, c->pend, have);
    ssize_t r = recv(c->fd, rbuf + have, RBUF_SIZE - have, 0);
    if (r == 0) {
        conn_fail(c, 1);
        return;
    }
    if (r < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) conn_fail(c, 1);
        return;
    }
    if (lat_on || g_go) g_now_us_wall = wall_us();
    size_t n = have + (size_t)r, off = 0;
    if (c->state == S_HS) {
        char *e = memmem(rbuf, n, "\r\n\r\n", 4);
        if (!e) {
            if (n > 16384) {
                conn_fail(c, 0);
                return;
            }
            off = 0;
            goto keep;
        }
        if (n < 12 || memcmp(rbuf + 9, "101", 3) != 0) {
            if (g_failed < 5) logmsg("handshake refused: %.*s", (int)(e - rbuf), rbuf);
            conn_fail(c, 0);
            return;
        }
        off = (size_t)(e - rbuf) + 4;
        on_open(c);
        if (c->state != S_OPEN) return;
    }
    off += parse_frames(c, rbuf + off, n - off);
    if (c->state != S_OPEN) return;
keep:
    c->pend_len = 0;
    if (off < n) {
        size_t rest = n - off;
        if (rest > c->pend_cap) {
            char *nb = realloc(c->pend, rest);
            if (!nb) abort();
            c->pend = nb;
            c->pend_cap = (uint32_t)rest;
        }
        memmove(c->pend, rbuf + off, rest);
        c->pend_len = (uint32_t)rest;
    }
}

static void on_writable(struct conn *c) {
    if (c->state == S_CONNECTING) {
        on_connected(c);
        return;
    }
    while (c->out_off < c->out_len) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            conn_fail(c, 1);
            return;
        }
        c->out_off += (uint32_t)w;
    }
    free(c->out);
    c->out = NULL;
    c->out_len = c->out_off = 0;
    want_write(c, 0);
}

/* --sync: read "GO T0 T1 DRAIN" from stdin; end the process if stdin closes
 * (the harness is gone). */
static void on_stdin(void) {
    ssize_t r = read(0, g_stdin_buf + g_stdin_len, sizeof g_stdin_buf - 1 - g_stdin_len);
    if (r <= 0) {
        logmsg("stdin closed before GO; exiting");
        exit(3);
    }
    g_stdin_len += (size_t)r;
    g_stdin_buf[g_stdin_len] = 0;
    if (!strchr(g_stdin_buf, '\n')) {
        if (g_stdin_len >= sizeof g_stdin_buf - 1) g_stdin_len = 0;
        return;
    }
    long long t0, t1;
    double drain;
    if (sscanf(g_stdin_buf, "GO %lld %lld %lf", &t0, &t1, &drain) == 3 && t1 > t0) {
        g_t0 = t0;
        g_t1 = t1;
        g_drain = drain;
        g_go = 1;
        epoll_ctl(epfd, EPOLL_CTL_DEL, 0, NULL);
    } else {
        logmsg("ignoring stdin line: %s", g_stdin_buf);
    }
    g_stdin_len = 0;
}

/* Run the event loop until done() is true or the deadline passes.
 * New connections are started while fewer than --conc are pending. */
static void loop_until(int (*done)(void), double deadline) {
    struct epoll_event evs[512];
    while (!done()) {
        double now = mono();
        if (now >= deadline) return;
        while (g_next_to_connect < o_conns && g_pending < o_conc)
            start_connect(&conns[g_next_to_connect++]);
        int ms = (int)((deadline - now) * 1000) + 1;
        if (ms > 20) ms = 20;
        int k = epoll_wait(epfd, evs, 512, ms);
        for (int i = 0; i < k; i++) {
            if (evs[i].data.u32 == STDIN_TAG) {
                on_stdin();
                continue;
            }
            struct conn *c = &conns[evs[i].data.u32];
            if (c->fd < 0) continue;
            uint32_t e = evs[i].events;
            if (e & EPOLLOUT) on_writable(c);
            if (c->fd >= 0 && (e & (EPOLLIN | EPOLLERR | EPOLLHUP))) {
                if (c->state == S_CONNECTING)
                    on_connected(c);
                else
                    on_readable(c);
            }
        }
    }
}

static int all_settled(void) { return g_next_to_connect >= o_conns && g_pending == 0; }
static int all_confirmed(void) { return all_settled() && g_confirms >= g_open; }
static int all_ready(void) { return all_settled() && g_ready_conns >= g_open; }
static int all_resumed(void) { return all_settled() && g_reconf + g_resume_err + g_failed >= o_conns; }
static int never(void) { return 0; }
static int got_go(void) { return g_go; }

static double g_sync_cpu0 = -1, g_sync_cpu1 = -1;
static uint64_t g_sync_upd0 = 0, g_sync_upd1 = 0;
/* --sync: sample this process's CPU and the updates received so far at T0
 * and T1; done DRAIN after T1. */
static int sync_done(void) {
    int64_t w = wall_us();
    if (g_sync_cpu0 < 0 && w >= g_t0) {
        g_sync_cpu0 = self_cpu();
        g_sync_upd0 = g_updates;
    }
    if (g_sync_cpu1 < 0 && w >= g_t1) {
        g_sync_cpu1 = self_cpu();
        g_sync_upd1 = g_updates;
    }
    return w >= g_t1 + (int64_t)(g_drain * 1e6);
}

/* --sync: wait for GO, measure the window, print the result; returns the
 * exit status. */
static int run_sync(double t_setup) {
    int setup_open = g_open;
    printf("READY {\"conns_open\":%d,\"conns_failed\":%d,\"confirms\":%d,\"setup_s\":%.3f}\n",
           g_open, g_failed, g_confirms, t_setup);
    fflush(stdout);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = STDIN_TAG};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev) < 0) {
        logmsg("cannot watch stdin: %s", strerror(errno));
        return 4;
    }
    loop_until(got_go, mono() + o_setup_timeout + 600);
    if (!g_go) {
        logmsg("no GO on stdin");
        return 4;
    }
    double left = (double)(g_t1 - wall_us()) / 1e6 + g_drain;
    loop_until(sync_done, mono() + (left > 0 ? left : 0) + 5);
    if (g_sync_cpu0 < 0) g_sync_cpu0 = self_cpu();
    if (g_sync_cpu1 < 0) {
        g_sync_cpu1 = self_cpu();
        g_sync_upd1 = g_updates;
    }
    printf("{\"mode\":\"fanout\",\"sync\":true,\"conns_target\":%d,\"conns_open\":%d,"
           "\"conns_failed\":%d,\"setup_s\":%.3f,\"confirms\":%d,\"conns_open_end\":%d,"
           "\"closed_by_peer\":%d,\"window_s\":%.4f,\"gen_cpu_s\":%.4f,"
           "\"window_receipts\":%llu,\"window_arrivals\":%llu,\"updates_total\":%llu,\"update_bytes_avg\":%.1f,"
           "\"ids_dropped\":%llu,\"lat_count\":%llu,\"lat_negative\":%llu,\"lat_max_us\":%lld,"
           "\"heartbeats\":%llu,\"other_msgs\":%llu,\"ids\":[",
           o_conns, setup_open, g_failed, t_setup, g_confirms, g_open,
           g_closed_by_peer, (double)(g_t1 - g_t0) / 1e6, g_sync_cpu1 - g_sync_cpu0,
           (unsigned long long)g_window_receipts,
           (unsigned long long)(g_sync_upd1 - g_sync_upd0), (unsigned long long)g_updates,
           g_updates ? (double)g_update_bytes / (double)g_updates : 0.0,
           (unsigned long long)ids_dropped, (unsigned long long)slat_n,
           (unsigned long long)slat_neg, (long long)slat_max,
           (unsigned long long)g_heartbeats, (unsigned long long)g_other);
    int first = 1;
    for (uint32_t i = 0; i < IDS_CAP; i++)
        if (ids_key[i]) {
            printf("%s[%llu,%u]", first ? "" : ",", (unsigned long long)(ids_key[i] - 1),
                   ids_count[i]);
            first = 0;
        }
    printf("],\"lat_hist\":[");
    first = 1;
    for (int i = 0; i < SLAT_BUCKETS; i++)
        if (slat_hist[i]) {
            printf("%s[%lld,%u]", first ? "" : ",", (long long)slat_lower(i), slat_hist[i]);
            first = 0;
        }
    printf("],\"errors\":{");
    for (int i = 0; i < n_codes; i++)
        printf("%s\"%s\":%llu", i ? "," : "", code_name[i], (unsigned long long)code_count[i]);
    printf("}}\n");
    fflush(stdout);
    for (int i = 0; i < o_conns; i++)
        if (conns[i].fd >= 0) close(conns[i].fd);
    return 0;
}

static int64_t lat_pct(double q) {
    uint64_t total = lat_n, want = (uint64_t)(q * (double)total);
    if (total == 0) return -1;
    if (want >= total) want = total - 1;
    uint64_t acc = 0;
    for (int64_t i = 0; i < LAT_BUCKETS; i++) {
        acc += lat_hist[i];
        if (acc > want) return i;
    }
    return lat_max;
}

static void usage(void) {
    fprintf(stderr,
            "usage: wsgen --port P [--path /v1?api_key=K] [--mode fanout|idle|cmd|reconnect]\n"
            "  [--conns N] [--symbols A/USD,B/USD] [--latency] [--warmup S] [--duration S]\n"
            "  [--setup-timeout S] [--settle S] [--conc C] [--server-pid PID] [--aux-pid PID]\n"
            "  [--cmd-type T --cmd-data JSON --expect TYPE --depth D] [--resume-timeout S]\n"
            "  [--ready-signal]  (send SIGUSR2 to --server-pid once all clients are set up)\n"
            "  [--sources K]  (bind clients round-robin to 127.0.0.1 .. 127.0.0.K)\n"
            "  [--sync]  (fanout: READY on stdout, then wait for \"GO T0_US T1_US DRAIN_S\" on stdin)\n"
            "  [--kill-pid PID] [--reconnect-port P]  (reconnect: kill the clients' node at the\n"
            "   drop, reconnect to another node)\n");
    exit(2);
}

int main(int argc, char **argv) {
    static struct option opts[] = {
        {"host", 1, 0, 'h'},         {"port", 1, 0, 'p'},          {"path", 1, 0, 'P'},
        {"mode", 1, 0, 'm'},         {"conns", 1, 0, 'n'},         {"symbols", 1, 0, 's'},
        {"latency", 0, 0, 'L'},      {"warmup", 1, 0, 'w'},        {"duration", 1, 0, 'd'},
        {"setup-timeout", 1, 0, 'T'}, {"settle", 1, 0, 'S'},       {"conc", 1, 0, 'c'},
        {"server-pid", 1, 0, 'i'},   {"cmd-type", 1, 0, 'C'},      {"cmd-data", 1, 0, 'D'},
        {"expect", 1, 0, 'E'},       {"depth", 1, 0, 'x'},         {"resume-timeout", 1, 0, 'R'},
        {"ready-signal", 0, 0, 'Y'}, {"aux-pid", 1, 0, 'a'},         {"sources", 1, 0, 'k'},
        {"sync", 0, 0, 'G'},
        {"kill-pid", 1, 0, 'K'},
        {"reconnect-port", 1, 0, 'r'}, {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'h': o_host = optarg; break;
        case 'p': o_port = atoi(optarg); break;
        case 'P': o_path = optarg; break;
        case 'm':
            if (!strcmp(optarg, "fanout")) o_mode = M_FANOUT;
            else if (!strcmp(optarg, "idle")) o_mode = M_IDLE;
            else if (!strcmp(optarg, "cmd")) o_mode = M_CMD;
            else if (!strcmp(optarg, "reconnect")) o_mode = M_RECONNECT;
            else usage();
            break;
        case 'n': o_conns = atoi(optarg); break;
        case 's': o_symbols = optarg; break;
        case 'L': o_latency = 1; break;
        case 'w': o_warmup = atof(optarg); break;
        case 'd': o_duration = atof(optarg); break;
        case 'T': o_setup_timeout = atof(optarg); break;
        case 'S': o_settle = atof(optarg); break;
        case 'c': o_conc = atoi(optarg); break;
        case 'i': o_server_pid = atoi(optarg); break;
        case 'a': o_aux_pid = atoi(optarg); break;
        case 'C': o_cmd_type = optarg; break;
        case 'D': o_cmd_data = optarg; break;
        case 'E': o_expect = optarg; break;
        case 'x': o_depth = atoi(optarg); break;
        case 'R': o_resume_timeout = atof(optarg); break;
        case 'Y': o_ready_signal = 1; break;
        case 'k': o_sources = atoi(optarg); break;
        case 'G': o_sync = 1; break;
        case 'K': o_kill_pid = atoi(optarg); break;
        case 'r': o_reconnect_port = atoi(optarg); break;
        default: usage();
        }
    }
    if (o_port <= 0 || o_conns <= 0 || o_conc <= 0 || o_depth <= 0) usage();
    if (o_sources < 1 || o_sources > 250) usage();
    if (o_sync && o_mode != M_FANOUT) usage();
    if (strncmp(o_host, "127.", 4) != 0) {
        fprintf(stderr, "wsgen: refusing non-loopback host %s\n", o_host);
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    getrlimit(RLIMIT_NOFILE, &rl);
    if ((rlim_t)o_conns + 16 > rl.rlim_cur)
        logmsg("warning: fd limit %llu < %d connections", (unsigned long long)rl.rlim_cur, o_conns);

    /* subscribe message: {"id":"1","type":"subscribe","data":{"channel":"market_data","symbols":[...]}} */
    {
        char list[3000] = "";
        size_t ll = 0;
        char *dup = strdup(o_symbols), *save = NULL;
        for (char *tok = strtok_r(dup, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
            ll += (size_t)snprintf(list + ll, sizeof list - ll, "%s\"%s\"", ll ? "," : "", tok);
        free(dup);
        g_sub_len = (size_t)snprintf(g_sub_msg, sizeof g_sub_msg,
                                     "{\"id\":\"1\",\"type\":\"subscribe\",\"data\":{\"channel\":"
                                     "\"market_data\",\"symbols\":[%s]}}",
                                     list);
    }

    conns = calloc((size_t)o_conns, sizeof *conns);
    rbuf = malloc(RBUF_SIZE);
    if (o_latency) lat_hist = calloc(LAT_BUCKETS, sizeof *lat_hist);
    if (!conns || !rbuf || (o_latency && !lat_hist)) abort();
    if (o_sync) {
        slat_hist = calloc(SLAT_BUCKETS, sizeof *slat_hist);
        ids_key = calloc(IDS_CAP, sizeof *ids_key);
        ids_count = calloc(IDS_CAP, sizeof *ids_count);
        if (!slat_hist || !ids_key || !ids_count) abort();
    }
    for (int i = 0; i < o_conns; i++) conns[i].fd = -1;
    epfd = epoll_create1(EPOLL_CLOEXEC);

    double t_start = mono();
    long rss_before = o_mode == M_IDLE ? proc_rss_kb(o_server_pid) : -1;
    double srv_cpu_setup0 = proc_cpu(o_server_pid);

    int (*setup_done)(void) = all_settled;
    if (o_mode == M_FANOUT) setup_done = all_confirmed;
    if (o_mode == M_RECONNECT) setup_done = all_ready;
    loop_until(setup_done, t_start + o_setup_timeout);
    double t_setup = mono() - t_start;
    double srv_cpu_setup = proc_cpu(o_server_pid) - srv_cpu_setup0;
    logmsg("setup: %d open, %d failed, %d confirmed in %.2fs", g_open, g_failed, g_confirms, t_setup);
    if (o_sync) return run_sync(t_setup);
    /* A reference server started with --wait-ready ticks only from now on. */
    if (o_ready_signal && o_server_pid > 0) kill(o_server_pid, SIGUSR2);

    printf("{\"mode\":\"%s\",\"conns_target\":%d,\"conns_open\":%d,\"conns_failed\":%d,"
           "\"setup_s\":%.3f,\"setup_server_cpu_s\":%.3f,\"confirms\":%d",
           o_mode == M_FANOUT ? "fanout" : o_mode == M_IDLE ? "idle" : o_mode == M_CMD ? "cmd" : "reconnect",
           o_conns, g_open, g_failed, t_setup, srv_cpu_setup, g_confirms);

    if (o_mode == M_FANOUT || o_mode == M_CMD) {
        if (o_mode == M_CMD)
            for (int i = 0; i < o_conns; i++)
                if (conns[i].state == S_OPEN)
                    for (int d = 0; d < o_depth; d++) send_cmd(&conns[i]);
        loop_until(never, mono() + o_warmup);
        uint64_t u0 = g_updates, r0 = g_replies, e0 = g_errors;
        unsigned long long b0[2], t0[2], b1[2], t1[2];
        cpu_jiffies(0, &b0[0], &t0[0]);
        cpu_jiffies(1, &b0[1], &t0[1]);
        double s0 = proc_cpu(o_server_pid), a0 = proc_cpu(o_aux_pid), g0 = self_cpu(), w0 = mono();
        /* The harness may read other processes' CPU at these marks. */
        logmsg("window start");
        lat_on = o_latency;
        loop_until(never, w0 + o_duration);
        lat_on = 0;
        double w1 = mono(), s1 = proc_cpu(o_server_pid), a1 = proc_cpu(o_aux_pid), g1 = self_cpu();
        logmsg("window end");
        cpu_jiffies(0, &b1[0], &t1[0]);
        cpu_jiffies(1, &b1[1], &t1[1]);
        double win = w1 - w0;
        double busy0 = t1[0] > t0[0] ? 100.0 * (double)(b1[0] - b0[0]) / (double)(t1[0] - t0[0]) : -1;
        double busy1 = t1[1] > t0[1] ? 100.0 * (double)(b1[1] - b0[1]) / (double)(t1[1] - t0[1]) : -1;
        printf(",\"window_s\":%.4f,\"updates\":%llu,\"replies\":%llu,\"window_errors\":%llu,"
               "\"server_cpu_s\":%.4f,\"gen_cpu_s\":%.4f,\"gen_cpu_pct\":%.1f,"
               "\"cpu0_busy_pct\":%.1f,\"cpu1_busy_pct\":%.1f,\"conns_open_end\":%d,"
               "\"closed_by_peer\":%d,\"cmd_unavailable\":%d,\"aux_cpu_s\":%.4f",
               win, (unsigned long long)(g_updates - u0), (unsigned long long)(g_replies - r0),
               (unsigned long long)(g_errors - e0), s0 >= 0 ? s1 - s0 : -1.0, g1 - g0,
               100.0 * (g1 - g0) / win, busy0, busy1, g_open, g_closed_by_peer, g_cmd_unavailable,
               a0 >= 0 && a1 >= 0 ? a1 - a0 : -1.0);
        if (o_latency)
            printf(",\"latency\":{\"count\":%llu,\"p50_us\":%lld,\"p90_us\":%lld,\"p99_us\":%lld,"
                   "\"p999_us\":%lld,\"max_us\":%lld,\"negative\":%llu}",
                   (unsigned long long)lat_n, (long long)lat_pct(0.50), (long long)lat_pct(0.90),
                   (long long)lat_pct(0.99), (long long)lat_pct(0.999), (long long)lat_max,
                   (unsigned long long)lat_neg);
    } else if (o_mode == M_IDLE) {
        loop_until(never, mono() + o_settle);
        long rss_after = proc_rss_kb(o_server_pid);
        printf(",\"rss_before_kb\":%ld,\"rss_after_kb\":%ld,\"conns_open_end\":%d,\"closed_by_peer\":%d",
               rss_before, rss_after, g_open, g_closed_by_peer);
    } else { /* reconnect */
        int ready = g_ready_conns;
        uint64_t upd_before = g_updates;
        double t_drop = mono(), s0 = proc_cpu(o_server_pid), a0 = proc_cpu(o_aux_pid);
        if (o_kill_pid > 0 && kill(o_kill_pid, SIGKILL) != 0)
            logmsg("kill %d: %s", o_kill_pid, strerror(errno));
        for (int i = 0; i < o_conns; i++) {
            struct conn *c = &conns[i];
            if (c->fd >= 0) {
                close(c->fd);
                c->fd = -1;
            }
            conn_reset(c);
            c->pass = 1;
            c->done = 0;
            c->state = S_FREE;
        }
        g_open = g_pending = g_failed = 0;
        g_next_to_connect = 0;
        loop_until(all_resumed, t_drop + o_resume_timeout);
        double t_all = mono() - t_drop, s1 = proc_cpu(o_server_pid), a1 = proc_cpu(o_aux_pid);
        /* Keep the resumed clients a moment to count what arrives after the
         * confirmation (replayed and live updates). */
        uint64_t upd_resumed = g_updates;
        loop_until(never, mono() + o_settle);
        printf(",\"ready_before_drop\":%d,\"resume_s\":%.4f,\"confirm_s\":%.4f,\"resumed\":%d,"
               "\"confirmed\":%d,\"resume_errors\":%d,\"not_resumed\":%d,"
               "\"not_recovered\":%d,\"replayed_claimed\":%lld,"
               "\"reconnect_failed\":%d,\"updates_until_resumed\":%llu,"
               "\"updates_after_resumed\":%llu,\"after_s\":%.2f,\"server_cpu_s\":%.4f,"
               "\"aux_cpu_s\":%.4f",
               ready, t_all, g_confirmed_resume ? g_t_last_conf - t_drop : -1.0, g_reconf,
               g_confirmed_resume, g_resume_err, g_not_resumed, g_not_recovered,
               g_replayed_claimed, g_failed,
               (unsigned long long)(upd_resumed - upd_before),
               (unsigned long long)(g_updates - upd_resumed), o_settle, s0 >= 0 ? s1 - s0 : -1.0,
               a0 >= 0 && a1 >= 0 ? a1 - a0 : -1.0);
    }
    printf(",\"update_bytes_avg\":%.1f", g_updates ? (double)g_update_bytes / (double)g_updates : 0.0);
    printf(",\"updates_total\":%llu,\"heartbeats\":%llu,\"other_msgs\":%llu,\"errors\":{", (unsigned long long)g_updates,
           (unsigned long long)g_heartbeats, (unsigned long long)g_other);
    for (int i = 0; i < n_codes; i++)
        printf("%s\"%s\":%llu", i ? "," : "", code_name[i], (unsigned long long)code_count[i]);
    printf("}}\n");
    fflush(stdout);
    for (int i = 0; i < o_conns; i++)
        if (conns[i].fd >= 0) close(conns[i].fd);
    return 0;
}
