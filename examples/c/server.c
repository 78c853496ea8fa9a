/*
 * server.c: a SniTun server through libsnitun's C API.
 * SPDX-License-Identifier: Apache-2.0
 *
 * Listens for devices (peer port) and callers (SNI port), prints the ports
 * it bound, optionally mints a token for a device, reports devices as they
 * come and go, and stops gracefully on SIGINT or SIGTERM.
 *
 *   server [--fernet-key KEY] [--sni ADDR] [--peer ADDR] [--listen ADDR]
 *          [--proxy-protocol] [--mint HOSTNAME] [--log LEVEL]
 *
 * Without --fernet-key a fresh key is generated (and printed). Without any
 * address it listens on 127.0.0.1:0 for both (the system picks the ports).
 * Output on stdout, one `KEY=value` per line, then `READY`:
 *   FERNET_KEY=...    (only when generated)
 *   SNI_PORT=n / PEER_PORT=n / LISTEN_PORT=n   (one per listener)
 *   TOKEN=... AES_KEY=... AES_IV=...   (with --mint)
 * then `PEER_CONNECTED host addr` / `PEER_DISCONNECTED host reason` lines,
 * and `STOPPED` at the end. Log records go to stderr.
 */
#define _POSIX_C_SOURCE 200809L

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "snitun.h"

#define MAX_ADDRS 8

static volatile sig_atomic_t stop_requested = 0;

static void on_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

/* Print what failed and the library's message, then exit. */
static void fail(const char *what, snitun_result result) {
    fprintf(stderr, "server: %s failed (%u, %s): %s\n", what, (unsigned)result,
            snitun_result_description(result), snitun_last_error());
    exit(1);
}

static void check(const char *what, snitun_result result) {
    if (result != SNITUN_RESULT_OK) {
        fail(what, result);
    }
}

static void on_log(void *userdata, snitun_log_level level, const char *target,
                   const char *message) {
    static const char *const names[] = {"OFF", "ERROR", "WARN", "INFO", "DEBUG", "TRACE"};
    (void)userdata;
    fprintf(stderr, "[%s] %s: %s\n", level <= 5 ? names[level] : "?", target, message);
}

/* Runs on the server's event thread. */
static void on_peer_event(void *userdata, snitun_peer_event_kind kind,
                          const char *hostname, const char *detail) {
    (void)userdata;
    if (kind == SNITUN_PEER_EVENT_KIND_CONNECTED) {
        printf("PEER_CONNECTED %s %s\n", hostname, detail);
    } else {
        printf("PEER_DISCONNECTED %s %s\n", hostname, detail);
    }
    fflush(stdout);
}

static unsigned parse_level(const char *text) {
    static const char *const names[] = {"off", "error", "warn", "info", "debug", "trace"};
    for (unsigned i = 0; i < 6; i++) {
        if (strcmp(text, names[i]) == 0) {
            return i;
        }
    }
    fprintf(stderr, "server: unknown log level %s (off, error, warn, info, debug, trace)\n", text);
    exit(2);
}

/* Mint a token for `hostname` and print it with its AES key and IV. */
static void mint(const char *fernet_key, const char *hostname) {
    snitun_token_config *config = NULL;
    snitun_token *token = NULL;
    char text[512];
    char key_hex[SNITUN_AES_KEY_LEN * 2 + 1];
    char iv_hex[SNITUN_AES_IV_LEN * 2 + 1];
    size_t n = 0;

    check("snitun_token_config_new", snitun_token_config_new(&config));
    check("--fernet-key", snitun_token_config_set_fernet_key(config, fernet_key));
    check("--mint", snitun_token_config_set_hostname(config, hostname));
    check("snitun_token_mint", snitun_token_mint(config, &token));
    check("snitun_token_string", snitun_token_string(token, text, sizeof text, &n));
    check("snitun_token_aes_key_hex", snitun_token_aes_key_hex(token, key_hex, sizeof key_hex, NULL));
    check("snitun_token_aes_iv_hex", snitun_token_aes_iv_hex(token, iv_hex, sizeof iv_hex, NULL));
    printf("TOKEN=%s\nAES_KEY=%s\nAES_IV=%s\n", text, key_hex, iv_hex);
    snitun_token_free(token);
    snitun_token_config_free(config);
}

static void print_ports(const snitun_server *server, snitun_listener_kind kind, const char *name) {
    size_t count = snitun_server_bound_count(server, kind);
    for (size_t i = 0; i < count; i++) {
        uint16_t port = 0;
        check("snitun_server_bound_port", snitun_server_bound_port(server, kind, i, &port));
        printf("%s_PORT=%u\n", name, (unsigned)port);
    }
}

static void usage(void) {
    fprintf(stderr,
            "usage: server [--fernet-key KEY] [--sni ADDR] [--peer ADDR] [--listen ADDR]\n"
            "              [--proxy-protocol] [--mint HOSTNAME] [--log LEVEL]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *fernet_key = NULL;
    const char *sni[MAX_ADDRS], *peer[MAX_ADDRS], *single[MAX_ADDRS];
    size_t sni_n = 0, peer_n = 0, single_n = 0;
    const char *mint_host = NULL;
    int proxy_protocol = 0;
    unsigned level = SNITUN_LOG_LEVEL_WARN;
    char generated[SNITUN_FERNET_KEY_LEN + 1];

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(arg, "--proxy-protocol") == 0) {
            proxy_protocol = 1;
            continue;
        }
        if (strcmp(arg, "--version") == 0) {
            printf("libsnitun %s\n", snitun_version());
            return 0;
        }
        if (value == NULL) {
            usage();
        }
        i++;
        if (strcmp(arg, "--fernet-key") == 0) {
            fernet_key = value;
        } else if (strcmp(arg, "--sni") == 0 && sni_n < MAX_ADDRS) {
            sni[sni_n++] = value;
        } else if (strcmp(arg, "--peer") == 0 && peer_n < MAX_ADDRS) {
            peer[peer_n++] = value;
        } else if (strcmp(arg, "--listen") == 0 && single_n < MAX_ADDRS) {
            single[single_n++] = value;
        } else if (strcmp(arg, "--mint") == 0) {
            mint_host = value;
        } else if (strcmp(arg, "--log") == 0) {
            level = parse_level(value);
        } else {
            usage();
        }
    }

    check("snitun_set_log_callback", snitun_set_log_callback(on_log, NULL, level));

    if (fernet_key == NULL) {
        check("snitun_fernet_key_generate",
              snitun_fernet_key_generate(generated, sizeof generated, NULL));
        fernet_key = generated;
        printf("FERNET_KEY=%s\n", fernet_key);
    }
    if (sni_n == 0 && peer_n == 0 && single_n == 0) {
        sni[sni_n++] = "127.0.0.1:0";
        peer[peer_n++] = "127.0.0.1:0";
    }

    snitun_server_config *config = NULL;
    check("snitun_server_config_new", snitun_server_config_new(&config));
    check("--fernet-key", snitun_server_config_add_fernet_key(config, fernet_key));
    for (size_t i = 0; i < sni_n; i++) {
        check("--sni", snitun_server_config_add_sni_listen(config, sni[i]));
    }
    for (size_t i = 0; i < peer_n; i++) {
        check("--peer", snitun_server_config_add_peer_listen(config, peer[i]));
    }
    for (size_t i = 0; i < single_n; i++) {
        check("--listen", snitun_server_config_add_listen(config, single[i]));
    }
    check("--proxy-protocol", snitun_server_config_set_proxy_protocol(config, proxy_protocol != 0));
    check("snitun_server_config_set_peer_event_callback",
          snitun_server_config_set_peer_event_callback(config, on_peer_event, NULL));

    /* Signals first, so a stop request is never lost. */
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);

    snitun_server *server = NULL;
    check("snitun_server_start", snitun_server_start(config, &server));
    snitun_server_config_free(config);

    print_ports(server, SNITUN_LISTENER_KIND_SNI, "SNI");
    print_ports(server, SNITUN_LISTENER_KIND_PEER, "PEER");
    print_ports(server, SNITUN_LISTENER_KIND_SINGLE, "LISTEN");
    if (mint_host != NULL) {
        mint(fernet_key, mint_host);
    }
    printf("READY\n");
    fflush(stdout);

    const struct timespec tick = {0, 100 * 1000 * 1000};
    while (!stop_requested) {
        nanosleep(&tick, NULL);
    }

    snitun_string_list *hosts = NULL;
    check("snitun_server_peer_hostnames", snitun_server_peer_hostnames(server, &hosts));
    printf("PEERS=%zu", snitun_server_peer_count(server));
    for (size_t i = 0; i < snitun_string_list_len(hosts); i++) {
        printf(" %s", snitun_string_list_get(hosts, i));
    }
    printf("\n");
    fflush(stdout);
    snitun_string_list_free(hosts);

    snitun_result stopped = snitun_server_stop(server, 10000);
    if (stopped != SNITUN_RESULT_OK) {
        fprintf(stderr, "server: stop: %s\n", snitun_last_error());
    }
    snitun_server_free(server);
    printf("STOPPED\n");
    fflush(stdout);
    return stopped == SNITUN_RESULT_OK ? 0 : 1;
}
