/*
 * refserver - the bare reference WebSocket fan-out server (the floor).
 *
 * Why it exists: every benchmark run also measures the cheapest possible
 * server on the same machine, so the real server's cost is reported as a
 * ratio to that floor rather than as an absolute number that drifts with the
 * host.  It has no protocol logic: a minimal HTTP upgrade handshake, the
 * first text message of a client is taken as its subscribe (the number of
 * '/' characters in it is the number of symbols), it answers with a fixed
 * subscription_confirmation, and then every tick writes pre-framed ~180-byte
 * market_data updates straight to the sockets with one send() per
 * connection (write-through, like uvloop or Node; the k frames of a client
 * subscribed to k symbols leave in one send, which is the cheapest way).
 *
 * Why C rather than Python: the earlier study's fastest Python paths
 * (uvloop, Twisted with socket.send write-through) cost ~4-5 us per
 * delivery, about 90% of it kernel time; C removes the remaining
 * interpreter cost, so this is the true floor of the machine.
 *
 * A connection whose socket is full gets no new ticks until its pending
 * bytes are flushed (as a server with backpressure would do), so a slow
 * client does not make this server spin on EAGAIN.
 *
 * --tick-interval 0 means one tick per event-loop turn (as fast as
 * possible), matching the real server's flag.  Listens on 127.0.0.1 only.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SYMBOLS 100
#define RBUF_SIZE 65536

struct conn {
    int fd;
    uint8_t open;    /* handshake done */
    uint8_t nsym;    /* 0 until subscribed */
    char *in;        /* handshake / partial frame bytes */
    uint32_t in_len;
    char *out;       /* unsent bytes (socket was full) */
    uint32_t out_len, out_off;
};

static struct conn **conns; /* indexed by fd */
static int max_fds;
static int *subs;           /* fds of subscribed connections */
static int nsubs = 0;
static int epfd;
static char rbuf[RBUF_SIZE];
static volatile sig_atomic_t stop = 0;

/* ---- SHA-1 and base64, only for Sec-WebSocket-Accept ---- */
#define ROL(v, b) (((v) << (b)) | ((v) >> (32 - (b))))
static void sha1(const unsigned char *msg, size_t len, unsigned char out[20]) {
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    size_t total = ((len + 8) / 64 + 1) * 64;
    unsigned char *m = calloc(total, 1);
    memcpy(m, msg, len);
    m[len] = 0x80;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++) m[total - 1 - i] = (unsigned char)(bits >> (8 * i));
    for (size_t off = 0; off < total; off += 64) {
        uint32_t w[80];
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)m[off + 4 * i] << 24 | (uint32_t)m[off + 4 * i + 1] << 16 |
                   (uint32_t)m[off + 4 * i + 2] << 8 | m[off + 4 * i + 3];
        for (int i = 16; i < 80; i++) w[i] = ROL(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
        for (int i = 0; i < 80; i++) {
            uint32_t f, k;
            if (i < 20) f = (b & c) | (~b & d), k = 0x5A827999;
            else if (i < 40) f = b ^ c ^ d, k = 0x6ED9EBA1;
            else if (i < 60) f = (b & c) | (b & d) | (c & d), k = 0x8F1BBCDC;
            else f = b ^ c ^ d, k = 0xCA62C1D6;
            uint32_t t = ROL(a, 5) + f + e + k + w[i];
            e = d, d = c, c = ROL(b, 30), b = a, a = t;
        }
        h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e;
    }
    free(m);
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 4; j++) out[4 * i + j] = (unsigned char)(h[i] >> (24 - 8 * j));
}

static void b64(const unsigned char *in, size_t n, char *out) {
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0) |
                     (i + 2 < n ? in[i + 2] : 0);
        out[o++] = t[(v >> 18) & 63];
        out[o++] = t[(v >> 12) & 63];
        out[o++] = i + 1 < n ? t[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? t[v & 63] : '=';
    }
    out[o] = 0;
}

/* ---- connections ---- */

static void conn_close(struct conn *c) {
    if (c->nsym) {
        for (int i = 0; i < nsubs; i++)
            if (subs[i] == c->fd) {
                subs[i] = subs[--nsubs];
                break;
            }
    }
    conns[c->fd] = NULL;
    close(c->fd);
    free(c->in);
    free(c->out);
    free(c);
}

static void set_out(struct conn *c, int on) {
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.fd = c->fd};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Write-through; keep the unsent tail and wait for EPOLLOUT if the socket is full. */
static int send_all(struct conn *c, const char *p, size_t n) {
    ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
    if (w < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
        w = 0;
    }
    if ((size_t)w < n) {
        c->out = malloc(n - (size_t)w);
        memcpy(c->out, p + w, n - (size_t)w);
        c->out_len = (uint32_t)(n - (size_t)w);
        c->out_off = 0;
        set_out(c, 1);
    }
    return 0;
}

static const char GUID[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

static int do_handshake(struct conn *c) {
    char *e = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    if (!e) return c->in_len > 8192 ? -1 : 0;
    *e = 0;
    char *k = strcasestr(c->in, "\r\nSec-WebSocket-Key:");
    if (!k) return -1;
    k += 20;
    while (*k == ' ') k++;
    char key[128];
    size_t kl = strcspn(k, "\r\n ");
    if (kl > 60) return -1;
    memcpy(key, k, kl);
    memcpy(key + kl, GUID, sizeof GUID);
    unsigned char dig[20];
    char acc[32], resp[256];
    sha1((unsigned char *)key, kl + sizeof GUID - 1, dig);
    b64(dig, 20, acc);
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                     acc);
    size_t rest = c->in_len - (size_t)(e + 4 - c->in);
    memmove(c->in, e + 4, rest);
    c->in_len = (uint32_t)rest;
    c->open = 1;
    if (!rest) {
        free(c->in);
        c->in = NULL;
    }
    return send_all(c, resp, (size_t)n);
}

static const char CONFIRM[] =
    "{\"id\":\"1\",\"type\":\"subscription_confirmation\",\"data\":{\"status\":\"subscribed\","
    "\"channel\":\"market_data\",\"subscription_id\":\"sub_1\"}}";

/* Parse client frames in c->in; the first text frame is the subscribe. */
static int do_frames(struct conn *c) {
    size_t off = 0, n = c->in_len;
    unsigned char *p = (unsigned char *)c->in;
    while (n - off >= 6) {
        uint64_t len = p[off + 1] & 0x7f;
        size_t hl = 2;
        if (len == 126) {
            if (n - off < 8) break;
            len = (uint64_t)p[off + 2] << 8 | p[off + 3];
            hl = 4;
        } else if (len == 127) {
            return -1; /* no client sends that much here */
        }
        if (!(p[off + 1] & 0x80)) return -1; /* clients must mask */
        if (n - off < hl + 4 + len) break;
        unsigned char *mk = p + off + hl, *pl = mk + 4;
        int op = p[off] & 0x0f;
        if (op == 8) return -1;
        if (op == 1 && !c->nsym) {
            int k = 0;
            for (uint64_t i = 0; i < len; i++)
                if ((pl[i] ^ mk[i & 3]) == '/') k++;
            c->nsym = (uint8_t)(k < 1 ? 1 : k > MAX_SYMBOLS ? MAX_SYMBOLS : k);
            char fr[256];
            size_t cl = sizeof CONFIRM - 1;
            fr[0] = (char)0x81;
            fr[1] = 126;
            fr[2] = (char)(cl >> 8);
            fr[3] = (char)cl;
            memcpy(fr + 4, CONFIRM, cl);
            if (send_all(c, fr, cl + 4) < 0) return -1;
            subs[nsubs++] = c->fd;
        }
        off += hl + 4 + (size_t)len;
    }
    if (off == n) {
        free(c->in);
        c->in = NULL;
        c->in_len = 0;
    } else if (off) {
        memmove(c->in, c->in + off, n - off);
        c->in_len = (uint32_t)(n - off);
    }
    return 0;
}

static void on_read(struct conn *c) {
    ssize_t r = recv(c->fd, rbuf, sizeof rbuf, 0);
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
        conn_close(c);
        return;
    }
    if (r < 0) return;
    char *nb = realloc(c->in, c->in_len + (size_t)r);
    if (!nb) abort();
    memcpy(nb + c->in_len, rbuf, (size_t)r);
    c->in = nb;
    c->in_len += (uint32_t)r;
    if (!c->open && do_handshake(c) < 0) {
        conn_close(c);
        return;
    }
    if (c->open && c->in_len && do_frames(c) < 0) conn_close(c);
}

static void on_write(struct conn *c) {
    while (c->out_off < c->out_len) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            conn_close(c);
            return;
        }
        c->out_off += (uint32_t)w;
    }
    free(c->out);
    c->out = NULL;
    c->out_len = c->out_off = 0;
    set_out(c, 0);
}

/* ---- ticks ---- */

static char tickbuf[MAX_SYMBOLS * 256];
static size_t frame_end[MAX_SYMBOLS + 1]; /* frame_end[k] = bytes of the first k frames */
static uint64_t msg_seq = 0;

/* Build one pre-framed update per symbol, stamped with the wall clock. */
static void build_frames(int maxk) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char stamp[64];
    snprintf(stamp, sizeof stamp, "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ts.tv_nsec / 1000));
    size_t off = 0;
    frame_end[0] = 0;
    for (int k = 0; k < maxk; k++) {
        char *f = tickbuf + off;
        int n = snprintf(f + 4, 250,
                         "{\"id\":\"msg_%llu\",\"type\":\"update\",\"data\":{\"channel\":\"market_data\","
                         "\"symbol\":\"TK%d/USD\",\"price\":\"1.23\",\"change_24h\":\"0.12\","
                         "\"volume_24h\":\"1000\",\"timestamp\":\"%s\"}}",
                         (unsigned long long)++msg_seq, k, stamp);
        f[0] = (char)0x81;
        f[1] = 126;
        f[2] = (char)(n >> 8);
        f[3] = (char)n;
        off += (size_t)n + 4;
        frame_end[k + 1] = off;
    }
}

static void tick(void) {
    int maxk = 0;
    for (int i = 0; i < nsubs; i++) {
        int k = conns[subs[i]]->nsym;
        if (k > maxk) maxk = k;
    }
    if (!maxk) return;
    build_frames(maxk);
    for (int i = 0; i < nsubs; i++) {
        struct conn *c = conns[subs[i]];
        if (c->out) continue; /* still flushing: skip this tick */
        if (send_all(c, tickbuf, frame_end[c->nsym]) < 0) {
            conn_close(c);
            i--; /* conn_close moved the last subscriber into slot i */
        }
    }
}

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void on_signal(int s) { stop = 1; }

int main(int argc, char **argv) {
    int port = 0;
    double interval = 0;
    static struct option opts[] = {{"port", 1, 0, 'p'}, {"tick-interval", 1, 0, 't'}, {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (ch == 'p') port = atoi(optarg);
        else if (ch == 't') interval = atof(optarg);
        else {
            fprintf(stderr, "usage: refserver --port P [--tick-interval S]\n");
            return 2;
        }
    }
    if (port <= 0) {
        fprintf(stderr, "usage: refserver --port P [--tick-interval S]\n");
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    max_fds = (int)rl.rlim_cur;
    conns = calloc((size_t)max_fds, sizeof *conns);
    subs = calloc((size_t)max_fds, sizeof *subs);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 4096) < 0) {
        perror("refserver: bind/listen");
        return 1;
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
    printf("refserver listening on 127.0.0.1:%d tick-interval %g\n", port, interval);
    fflush(stdout);

    struct epoll_event evs[1024];
    double next_tick = mono() + interval;
    while (!stop) {
        int timeout;
        if (!nsubs) timeout = 10;
        else if (interval <= 0) timeout = 0;
        else {
            double d = next_tick - mono();
            timeout = d <= 0 ? 0 : (int)(d * 1000) + 1;
        }
        int k = epoll_wait(epfd, evs, 1024, timeout);
        for (int i = 0; i < k; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) {
                for (;;) {
                    int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (cfd < 0) break;
                    if (cfd >= max_fds) {
                        close(cfd);
                        continue;
                    }
                    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *c = calloc(1, sizeof *c);
                    c->fd = cfd;
                    conns[cfd] = c;
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = cfd};
                    epoll_ctl(epfd, EPOLL_CTL_ADD, cfd, &cev);
                }
                continue;
            }
            struct conn *c = conns[fd];
            if (!c) continue;
            if (evs[i].events & EPOLLOUT) on_write(c);
            c = conns[fd];
            if (c && (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) on_read(c);
        }
        if (nsubs) {
            if (interval <= 0) {
                tick();
            } else {
                double now = mono();
                if (now >= next_tick) {
                    tick();
                    next_tick += interval;
                    if (next_tick < now) next_tick = now + interval; /* fell behind: no burst */
                }
            }
        } else {
            next_tick = mono() + interval;
        }
    }
    return 0;
}
