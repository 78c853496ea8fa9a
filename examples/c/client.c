/*
 * client.c: a SniTun client peer (the device side) through libsnitun's C
 * API.
 * SPDX-License-Identifier: Apache-2.0
 *
 * Connects to a server's peer port with a token and its AES key and IV,
 * then relays every caller the server forwards to a local TCP endpoint
 * (normally the device's TLS server), until SIGINT/SIGTERM or until the
 * tunnel ends.
 *
 *   client --server HOST:PORT --token TOKEN --aes-key HEX --aes-iv HEX
 *          --endpoint HOST:PORT [--cipher NAME] [--protocol-version N]
 *          [--allow CIDR]... [--block CIDR]... [--reconnect]
 *          [--timeout MS] [--log LEVEL]
 *
 * Output on stdout: `CONNECTED`, `DISCONNECTED reason`,
 * `ENDPOINT_ERROR caller error` lines as they happen, and `END reason` at
 * the end. Log records go to stderr. Exit status: 0 when stopped by a
 * signal, 1 on errors, 3 when the tunnel ended by itself.
 */
#define _POSIX_C_SOURCE 200809L

#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "snitun.h"

static volatile sig_atomic_t stop_requested = 0;

static void on_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

static void fail(const char *what, snitun_result result) {
    fprintf(stderr, "client: %s failed (%u, %s): %s\n", what, (unsigned)result,
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

/* The three callbacks run on the client's event thread. */
static void on_connected(void *userdata) {
    (void)userdata;
    printf("CONNECTED\n");
    fflush(stdout);
}

static void on_disconnected(void *userdata, const char *reason, bool will_reconnect) {
    (void)userdata;
    printf("DISCONNECTED %s%s\n", reason, will_reconnect ? " (reconnecting)" : "");
    fflush(stdout);
}

static void on_endpoint_error(void *userdata, const char *endpoint, const char *caller,
                              const char *error) {
    (void)userdata;
    (void)endpoint;
    printf("ENDPOINT_ERROR %s %s\n", caller, error);
    fflush(stdout);
}

static unsigned parse_level(const char *text) {
    static const char *const names[] = {"off", "error", "warn", "info", "debug", "trace"};
    for (unsigned i = 0; i < 6; i++) {
        if (strcmp(text, names[i]) == 0) {
            return i;
        }
    }
    fprintf(stderr, "client: unknown log level %s (off, error, warn, info, debug, trace)\n", text);
    exit(2);
}

static void usage(void) {
    fprintf(stderr,
            "usage: client --server HOST:PORT --token TOKEN --aes-key HEX --aes-iv HEX\n"
            "              --endpoint HOST:PORT [--cipher NAME] [--protocol-version N]\n"
            "              [--allow CIDR]... [--block CIDR]... [--reconnect]\n"
            "              [--timeout MS] [--log LEVEL]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *server_addr = NULL;
    unsigned level = SNITUN_LOG_LEVEL_WARN;
    unsigned long long timeout_ms = 30000;
    snitun_client_config *config = NULL;

    /* The server address comes first: it creates the config. */
    for (int i = 1; i + 1 < argc; i++) {
        if (strcmp(argv[i], "--server") == 0) {
            server_addr = argv[i + 1];
        }
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--version") == 0) {
            printf("libsnitun %s\n", snitun_version());
            return 0;
        }
    }
    if (server_addr == NULL) {
        usage();
    }
    check("--server", snitun_client_config_new(server_addr, &config));

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(arg, "--reconnect") == 0) {
            check("--reconnect",
                  snitun_client_config_set_reconnect(config, 1000, 300000, 2.0, 0.2));
            continue;
        }
        if (value == NULL) {
            usage();
        }
        i++;
        if (strcmp(arg, "--server") == 0) {
            /* Done above. */
        } else if (strcmp(arg, "--token") == 0) {
            check(arg, snitun_client_config_set_token(config, value));
        } else if (strcmp(arg, "--aes-key") == 0) {
            check(arg, snitun_client_config_set_aes_key_hex(config, value));
        } else if (strcmp(arg, "--aes-iv") == 0) {
            check(arg, snitun_client_config_set_aes_iv_hex(config, value));
        } else if (strcmp(arg, "--endpoint") == 0) {
            check(arg, snitun_client_config_set_endpoint(config, value));
        } else if (strcmp(arg, "--cipher") == 0) {
            check(arg, snitun_client_config_set_cipher(config, value));
        } else if (strcmp(arg, "--protocol-version") == 0) {
            int version = atoi(value);
            if (version < 0 || version > 255) {
                usage();
            }
            check(arg, snitun_client_config_set_protocol_version(config, (uint8_t)version));
        } else if (strcmp(arg, "--allow") == 0) {
            check(arg, snitun_client_config_add_allowed_network(config, value));
        } else if (strcmp(arg, "--block") == 0) {
            check(arg, snitun_client_config_add_blocked_network(config, value));
        } else if (strcmp(arg, "--timeout") == 0) {
            timeout_ms = strtoull(value, NULL, 10);
        } else if (strcmp(arg, "--log") == 0) {
            level = parse_level(value);
        } else {
            usage();
        }
    }

    check("snitun_set_log_callback", snitun_set_log_callback(on_log, NULL, level));
    check("callbacks", snitun_client_config_set_connected_callback(config, on_connected, NULL));
    check("callbacks",
          snitun_client_config_set_disconnected_callback(config, on_disconnected, NULL));
    check("callbacks",
          snitun_client_config_set_endpoint_error_callback(config, on_endpoint_error, NULL));

    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);

    snitun_client *client = NULL;
    check("connecting", snitun_client_connect(config, (uint64_t)timeout_ms, &client));
    /* The config was copied: free it (this also wipes the key). */
    snitun_client_config_free(config);

    /* Wait in short steps, so that a signal is noticed quickly. */
    bool ended = false;
    while (!stop_requested) {
        snitun_result waited = snitun_client_wait(client, 200);
        if (waited == SNITUN_RESULT_OK) {
            ended = true;
            break;
        }
        if (waited != SNITUN_RESULT_TIMEOUT) {
            fail("snitun_client_wait", waited);
        }
    }
    if (!ended) {
        check("snitun_client_disconnect", snitun_client_disconnect(client, 10000));
    }

    /* The reason's length is not known in advance: ask for it first. */
    size_t len = 0;
    check("snitun_client_end_reason", snitun_client_end_reason(client, NULL, 0, &len));
    char *reason = malloc(len + 1);
    if (reason == NULL) {
        return 1;
    }
    check("snitun_client_end_reason", snitun_client_end_reason(client, reason, len + 1, NULL));
    snitun_client_free(client);
    printf("END %s\n", reason);
    fflush(stdout);
    free(reason);
    return ended ? 3 : 0;
}
