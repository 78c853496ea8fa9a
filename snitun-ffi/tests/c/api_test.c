/*
 * api_test.c: tests libsnitun through its C API alone.
 * SPDX-License-Identifier: Apache-2.0
 *
 * 1. Every error path: NULL handles, out-pointers and strings, bad hex,
 *    wrong key/IV lengths, bad addresses, non-UTF-8 strings, bad cipher
 *    names and protocol versions, bad networks, bad Fernet keys, too small
 *    buffers, freeing NULL. Each must give the documented code and a
 *    message.
 * 2. A whole tunnel on loopback in this process: a server (ports chosen
 *    by the system), a token minted here, a client relaying to a TCP echo
 *    endpoint run by a thread of this program, and a caller that sends a
 *    TLS ClientHello with SNI and 256 KiB of data and reads them back.
 *
 * Prints one line per failed check and "API_TEST OK" (exit 0) or
 * "API_TEST FAILED <n>" (exit 1) at the end. Every wait is bounded.
 *
 * Built and run by snitun-ffi/tests/c_examples.rs.
 */

#define _POSIX_C_SOURCE 200809L

#include "snitun.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define HOST "device.example.test"
#define ALIAS "alias.example.test"
#define BAD_UTF8 "\xff\xfe"
#define PAYLOAD_LEN (256 * 1024)
#define WAIT_MS 20000
#define IO_TIMEOUT_S 30

static int failures;

#define CHECK(cond, ...)                                  \
    do {                                                  \
        if (!(cond)) {                                    \
            failures++;                                   \
            printf("FAIL line %d: ", __LINE__);           \
            printf(__VA_ARGS__);                          \
            printf("\n");                                 \
            fflush(stdout);                               \
        }                                                 \
    } while (0)

/* `rc` must be `want`, with a non-empty last error message. */
static void expect_err_at(int line, const char *what, snitun_result rc,
                          snitun_result want) {
    if (rc != want) {
        failures++;
        printf("FAIL line %d: %s returned %u (%s), expected %u (%s); "
               "message: %s\n",
               line, what, (unsigned)rc, snitun_result_description(rc),
               (unsigned)want, snitun_result_description(want),
               rc != SNITUN_RESULT_OK ? snitun_last_error() : "-");
        fflush(stdout);
        return;
    }
    if (want == SNITUN_RESULT_OK) {
        return;
    }
    const char *msg = snitun_last_error();
    size_t n = 0;
    snitun_result q = snitun_last_error_message(NULL, 0, &n);
    if (msg == NULL || msg[0] == '\0' || q != SNITUN_RESULT_OK || n == 0 ||
        n != strlen(msg)) {
        failures++;
        printf("FAIL line %d: %s: no last error message (query %u, n %zu)\n",
               line, what, (unsigned)q, n);
        fflush(stdout);
    }
}

#define EXPECT(call, want) expect_err_at(__LINE__, #call, (call), (want))
#define OK(call) expect_err_at(__LINE__, #call, (call), SNITUN_RESULT_OK)

/* The output handle must be NULL after a failure. */
#define EXPECT_OUT_NULL(call, want, out)                            \
    do {                                                            \
        out = (void *)&failures; /* any non-NULL pointer */         \
        expect_err_at(__LINE__, #call, (call), (want));             \
        CHECK(out == NULL, "%s: *out not NULL after failure", #call); \
    } while (0)

static void phase(const char *name) {
    printf("PHASE %s\n", name);
    fflush(stdout);
}

/* ---------------------------------------------------------------------- */
/* Error paths                                                             */
/* ---------------------------------------------------------------------- */

static char fernet_key[SNITUN_FERNET_KEY_LEN + 1];

static void test_general(void) {
    const char *version = snitun_version();
    CHECK(version != NULL && version[0] != '\0', "snitun_version empty");
    /* The header's macros describe the library that was loaded. */
    char want[64];
    snprintf(want, sizeof want, "%d.%d.%d", SNITUN_VERSION_MAJOR,
             SNITUN_VERSION_MINOR, SNITUN_VERSION_PATCH);
    CHECK(version != NULL && strcmp(version, want) == 0,
          "snitun_version() is %s, the header's macros say %s",
          version ? version : "NULL", want);
    CHECK(version != NULL && strcmp(version, SNITUN_VERSION) == 0,
          "snitun_version() is %s, SNITUN_VERSION is %s",
          version ? version : "NULL", SNITUN_VERSION);
    CHECK(strcmp(snitun_result_description(SNITUN_RESULT_OK), "") != 0,
          "no description for OK");
    CHECK(strcmp(snitun_result_description(9999), "unknown result code") == 0,
          "description of an unknown code: %s",
          snitun_result_description(9999));

    /* A failing call to have a message. */
    snitun_server_config *sc = NULL;
    EXPECT(snitun_server_config_new(NULL), SNITUN_RESULT_NULL_ARGUMENT);
    size_t n = 0;
    OK(snitun_last_error_message(NULL, 0, &n));
    CHECK(n > 0, "last error length 0");
    /* Size query without out_n. */
    CHECK(snitun_last_error_message(NULL, 0, NULL) ==
              SNITUN_RESULT_NULL_ARGUMENT,
          "snitun_last_error_message(NULL, 0, NULL) not NULL_ARGUMENT");
    char small[4];
    memset(small, 'x', sizeof small);
    size_t m = 0;
    CHECK(snitun_last_error_message(small, sizeof small, &m) ==
              SNITUN_RESULT_BUFFER_TOO_SMALL,
          "snitun_last_error_message small buffer not BUFFER_TOO_SMALL");
    CHECK(m == n, "snitun_last_error_message small buffer: n %zu, want %zu",
          m, n);
    CHECK(small[0] == 'x' && small[3] == 'x',
          "snitun_last_error_message touched a too small buffer");
    char big[512];
    CHECK(snitun_last_error_message(big, sizeof big, &m) == SNITUN_RESULT_OK &&
              strcmp(big, snitun_last_error()) == 0,
          "snitun_last_error_message copy differs");
    (void)sc;

    /* Log callback: bad level. */
    EXPECT(snitun_set_log_callback(NULL, NULL, SNITUN_LOG_LEVEL_TRACE + 1),
           SNITUN_RESULT_INVALID_ARGUMENT);
    OK(snitun_set_log_callback(NULL, NULL, SNITUN_LOG_LEVEL_OFF));

    /* Fernet key generation. */
    EXPECT(snitun_fernet_key_generate(NULL, 0, NULL),
           SNITUN_RESULT_NULL_ARGUMENT);
    n = 0;
    OK(snitun_fernet_key_generate(NULL, 0, &n));
    CHECK(n == SNITUN_FERNET_KEY_LEN, "fernet size query gave %zu", n);
    char tiny[SNITUN_FERNET_KEY_LEN];
    memset(tiny, 'x', sizeof tiny);
    n = 0;
    EXPECT(snitun_fernet_key_generate(tiny, sizeof tiny, &n),
           SNITUN_RESULT_BUFFER_TOO_SMALL);
    CHECK(n == SNITUN_FERNET_KEY_LEN, "fernet too small gave n %zu", n);
    CHECK(tiny[0] == 'x' && tiny[sizeof tiny - 1] == 'x',
          "fernet: too small buffer touched");
    OK(snitun_fernet_key_generate(fernet_key, sizeof fernet_key, &n));
    CHECK(strlen(fernet_key) == SNITUN_FERNET_KEY_LEN, "fernet key length");

    /* Freeing NULL is a no-op for every _free. */
    snitun_client_config_free(NULL);
    snitun_client_free(NULL);
    snitun_server_config_free(NULL);
    snitun_server_free(NULL);
    snitun_string_list_free(NULL);
    snitun_token_config_free(NULL);
    snitun_token_free(NULL);
}

static void test_token_errors(void) {
    snitun_token_config *tc = NULL;
    snitun_token *tok = NULL;
    const char *strings[] = {"", "not a key", BAD_UTF8,
                             /* 44 characters, not base64 */
                             "********************************************"};

    EXPECT(snitun_token_config_new(NULL), SNITUN_RESULT_NULL_ARGUMENT);
    OK(snitun_token_config_new(&tc));

    /* NULL handle for every setter. */
    EXPECT(snitun_token_config_set_fernet_key(NULL, fernet_key),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_token_config_set_hostname(NULL, HOST),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_token_config_add_alias(NULL, ALIAS),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_token_config_set_valid_seconds(NULL, 60),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_token_config_set_cipher(NULL, "aes-cbc"),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_token_config_set_protocol_version(NULL, 1),
           SNITUN_RESULT_NULL_ARGUMENT);
    /* NULL strings. */
    EXPECT(snitun_token_config_set_fernet_key(tc, NULL),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_token_config_set_hostname(tc, NULL),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_token_config_add_alias(tc, NULL),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_token_config_set_cipher(tc, NULL),
           SNITUN_RESULT_NULL_ARGUMENT);
    /* Non-UTF-8. */
    EXPECT(snitun_token_config_set_hostname(tc, BAD_UTF8),
           SNITUN_RESULT_INVALID_UTF8);
    EXPECT(snitun_token_config_add_alias(tc, BAD_UTF8),
           SNITUN_RESULT_INVALID_UTF8);
    EXPECT(snitun_token_config_set_cipher(tc, BAD_UTF8),
           SNITUN_RESULT_INVALID_UTF8);
    EXPECT(snitun_token_config_set_fernet_key(tc, BAD_UTF8),
           SNITUN_RESULT_INVALID_UTF8);
    /* Bad values. */
    for (size_t i = 0; i < sizeof strings / sizeof strings[0]; i++) {
        if (strcmp(strings[i], BAD_UTF8) == 0) {
            continue;
        }
        EXPECT(snitun_token_config_set_fernet_key(tc, strings[i]),
               SNITUN_RESULT_INVALID_ARGUMENT);
    }
    EXPECT(snitun_token_config_set_hostname(tc, ""),
           SNITUN_RESULT_INVALID_ARGUMENT);
    EXPECT(snitun_token_config_add_alias(tc, ""),
           SNITUN_RESULT_INVALID_ARGUMENT);
    EXPECT(snitun_token_config_set_cipher(tc, "aes-xyz"),
           SNITUN_RESULT_INVALID_ARGUMENT);
    EXPECT(snitun_token_config_set_cipher(tc, ""),
           SNITUN_RESULT_INVALID_ARGUMENT);
    EXPECT(snitun_token_config_set_protocol_version(tc,
                                                    SNITUN_PROTOCOL_VERSION + 1),
           SNITUN_RESULT_INVALID_ARGUMENT);
    EXPECT(snitun_token_config_set_protocol_version(tc, 255),
           SNITUN_RESULT_INVALID_ARGUMENT);

    /* Minting: NULLs and incomplete configs. */
    EXPECT_OUT_NULL(snitun_token_mint(NULL, &tok), SNITUN_RESULT_NULL_ARGUMENT,
                    tok);
    EXPECT(snitun_token_mint(tc, NULL), SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT_OUT_NULL(snitun_token_mint(tc, &tok), SNITUN_RESULT_INVALID_CONFIG,
                    tok);
    OK(snitun_token_config_set_fernet_key(tc, fernet_key));
    EXPECT_OUT_NULL(snitun_token_mint(tc, &tok), SNITUN_RESULT_INVALID_CONFIG,
                    tok);
    OK(snitun_token_config_set_hostname(tc, HOST));
    OK(snitun_token_mint(tc, &tok));
    CHECK(tok != NULL, "minted token is NULL");

    /* Token getters. */
    char buf[8];
    size_t n = 0;
    uint8_t raw[SNITUN_AES_KEY_LEN];
    EXPECT(snitun_token_string(NULL, NULL, 0, &n), SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_token_string(tok, NULL, 0, NULL),
           SNITUN_RESULT_NULL_ARGUMENT);
    OK(snitun_token_string(tok, NULL, 0, &n));
    CHECK(n > 40, "token length %zu", n);
    size_t m = 0;
    memset(buf, 'x', sizeof buf);
    EXPECT(snitun_token_string(tok, buf, sizeof buf, &m),
           SNITUN_RESULT_BUFFER_TOO_SMALL);
    CHECK(m == n, "token too small: n %zu, want %zu", m, n);
    CHECK(buf[0] == 'x', "token: too small buffer touched");
    /* Exactly the length, no room for the NUL. */
    char *exact = malloc(n + 1);
    CHECK(exact != NULL, "malloc");
    if (exact != NULL) {
        EXPECT(snitun_token_string(tok, exact, n, &m),
               SNITUN_RESULT_BUFFER_TOO_SMALL);
        OK(snitun_token_string(tok, exact, n + 1, NULL));
        CHECK(strlen(exact) == n, "token string length");
        free(exact);
    }
    EXPECT(snitun_token_aes_key(NULL, raw, sizeof raw),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_token_aes_key(tok, NULL, sizeof raw),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_token_aes_key(tok, raw, SNITUN_AES_KEY_LEN - 1),
           SNITUN_RESULT_BUFFER_TOO_SMALL);
    EXPECT(snitun_token_aes_iv(NULL, raw, sizeof raw),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_token_aes_iv(tok, NULL, sizeof raw),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_token_aes_iv(tok, raw, SNITUN_AES_IV_LEN - 1),
           SNITUN_RESULT_BUFFER_TOO_SMALL);
    EXPECT(snitun_token_aes_key_hex(NULL, NULL, 0, &n),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_token_aes_key_hex(tok, NULL, 0, NULL),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_token_aes_key_hex(tok, buf, sizeof buf, &n),
           SNITUN_RESULT_BUFFER_TOO_SMALL);
    CHECK(n == 2 * SNITUN_AES_KEY_LEN, "aes key hex length %zu", n);
    EXPECT(snitun_token_aes_iv_hex(NULL, NULL, 0, &n),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_token_aes_iv_hex(tok, NULL, 0, NULL),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_token_aes_iv_hex(tok, buf, sizeof buf, &n),
           SNITUN_RESULT_BUFFER_TOO_SMALL);
    CHECK(n == 2 * SNITUN_AES_IV_LEN, "aes iv hex length %zu", n);
    CHECK(snitun_token_valid_until(NULL) == 0.0, "valid_until(NULL) not 0");
    CHECK(snitun_token_valid_until(tok) > (double)time(NULL),
          "token already expired");

    snitun_token_free(tok);
    snitun_token_config_free(tc);
}

static void test_client_config_errors(void) {
    snitun_client_config *cc = NULL;
    uint8_t key[SNITUN_AES_KEY_LEN + 1];
    memset(key, 7, sizeof key);
    const char *bad_servers[] = {"host:99999", "host:", "127.0.0.1:-1",
                                 "[::1", ""};
    const char *bad_endpoints[] = {"host:99999", "bad endpoint:80", "",
                                   "127.0.0.1:70000"};
    const char *bad_networks[] = {"nonsense", "10.0.0.0/33", "1.2.3",
                                  "", "2001:db8::/129", "10.0.0.0/"};

    EXPECT_OUT_NULL(snitun_client_config_new(NULL, &cc),
                    SNITUN_RESULT_NULL_ARGUMENT, cc);
    EXPECT(snitun_client_config_new("127.0.0.1:1", NULL),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT_OUT_NULL(snitun_client_config_new(BAD_UTF8, &cc),
                    SNITUN_RESULT_INVALID_UTF8, cc);
    for (size_t i = 0; i < sizeof bad_servers / sizeof bad_servers[0]; i++) {
        cc = (void *)&failures;
        snitun_result rc = snitun_client_config_new(bad_servers[i], &cc);
        expect_err_at(__LINE__, bad_servers[i], rc,
                      SNITUN_RESULT_INVALID_ARGUMENT);
        CHECK(cc == NULL, "client config for %s not NULL", bad_servers[i]);
        if (rc == SNITUN_RESULT_OK) {
            snitun_client_config_free(cc);
        }
    }
    OK(snitun_client_config_new("127.0.0.1:1", &cc));

    /* NULL handle for every setter. */
    EXPECT(snitun_client_config_set_token(NULL, "x"),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_client_config_set_aes_key(NULL, key, SNITUN_AES_KEY_LEN),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_client_config_set_aes_iv(NULL, key, SNITUN_AES_IV_LEN),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_client_config_set_aes_key_hex(NULL, "00"),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_client_config_set_aes_iv_hex(NULL, "00"),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_client_config_set_cipher(NULL, "aes-cbc"),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_client_config_set_protocol_version(NULL, 1),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_client_config_set_endpoint(NULL, "127.0.0.1:1"),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_client_config_add_allowed_network(NULL, "10.0.0.0/8"),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_client_config_add_blocked_network(NULL, "10.0.0.0/8"),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_client_config_set_throttling(NULL, 10),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_client_config_set_reconnect(NULL, 1000, 2000, 2.0, 0.2),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_client_config_disable_reconnect(NULL),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_client_config_set_connect_timeout(NULL, 1000),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_client_config_set_connected_callback(NULL, NULL, NULL),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_client_config_set_disconnected_callback(NULL, NULL, NULL),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_client_config_set_endpoint_error_callback(NULL, NULL, NULL),
           SNITUN_RESULT_NULL_ARGUMENT);

    /* NULL strings and byte pointers. */
    EXPECT(snitun_client_config_set_token(cc, NULL),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_client_config_set_aes_key(cc, NULL, SNITUN_AES_KEY_LEN),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_client_config_set_aes_iv(cc, NULL, SNITUN_AES_IV_LEN),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_client_config_set_aes_key_hex(cc, NULL),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_client_config_set_aes_iv_hex(cc, NULL),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_client_config_set_cipher(cc, NULL),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_client_config_set_endpoint(cc, NULL),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_client_config_add_allowed_network(cc, NULL),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_client_config_add_blocked_network(cc, NULL),
           SNITUN_RESULT_NULL_ARGUMENT);

    /* Non-UTF-8 strings. */
    EXPECT(snitun_client_config_set_token(cc, BAD_UTF8),
           SNITUN_RESULT_INVALID_UTF8);
    EXPECT(snitun_client_config_set_aes_key_hex(cc, BAD_UTF8),
           SNITUN_RESULT_INVALID_UTF8);
    EXPECT(snitun_client_config_set_aes_iv_hex(cc, BAD_UTF8),
           SNITUN_RESULT_INVALID_UTF8);
    EXPECT(snitun_client_config_set_cipher(cc, BAD_UTF8),
           SNITUN_RESULT_INVALID_UTF8);
    EXPECT(snitun_client_config_set_endpoint(cc, BAD_UTF8),
           SNITUN_RESULT_INVALID_UTF8);
    EXPECT(snitun_client_config_add_allowed_network(cc, BAD_UTF8),
           SNITUN_RESULT_INVALID_UTF8);
    EXPECT(snitun_client_config_add_blocked_network(cc, BAD_UTF8),
           SNITUN_RESULT_INVALID_UTF8);

    /* Raw key and IV of the wrong length. */
    EXPECT(snitun_client_config_set_aes_key(cc, key, SNITUN_AES_KEY_LEN - 1),
           SNITUN_RESULT_INVALID_ARGUMENT);
    EXPECT(snitun_client_config_set_aes_key(cc, key, SNITUN_AES_KEY_LEN + 1),
           SNITUN_RESULT_INVALID_ARGUMENT);
    EXPECT(snitun_client_config_set_aes_key(cc, key, 0),
           SNITUN_RESULT_INVALID_ARGUMENT);
    EXPECT(snitun_client_config_set_aes_iv(cc, key, SNITUN_AES_IV_LEN - 1),
           SNITUN_RESULT_INVALID_ARGUMENT);
    EXPECT(snitun_client_config_set_aes_iv(cc, key, SNITUN_AES_IV_LEN + 1),
           SNITUN_RESULT_INVALID_ARGUMENT);
    OK(snitun_client_config_set_aes_key(cc, key, SNITUN_AES_KEY_LEN));
    OK(snitun_client_config_set_aes_iv(cc, key, SNITUN_AES_IV_LEN));

    /* Bad hex: wrong digits, wrong lengths. */
    char hex[80];
    memset(hex, 'z', 64);
    hex[64] = '\0';
    EXPECT(snitun_client_config_set_aes_key_hex(cc, hex),
           SNITUN_RESULT_INVALID_ARGUMENT);
    memset(hex, 'a', 64);
    hex[62] = '\0';
    EXPECT(snitun_client_config_set_aes_key_hex(cc, hex),
           SNITUN_RESULT_INVALID_ARGUMENT);
    memset(hex, 'a', 66);
    hex[66] = '\0';
    EXPECT(snitun_client_config_set_aes_key_hex(cc, hex),
           SNITUN_RESULT_INVALID_ARGUMENT);
    memset(hex, 'a', 63);
    hex[63] = '\0';
    EXPECT(snitun_client_config_set_aes_key_hex(cc, hex),
           SNITUN_RESULT_INVALID_ARGUMENT);
    EXPECT(snitun_client_config_set_aes_key_hex(cc, ""),
           SNITUN_RESULT_INVALID_ARGUMENT);
    memset(hex, 'g', 32);
    hex[32] = '\0';
    EXPECT(snitun_client_config_set_aes_iv_hex(cc, hex),
           SNITUN_RESULT_INVALID_ARGUMENT);
    memset(hex, 'a', 32);
    hex[30] = '\0';
    EXPECT(snitun_client_config_set_aes_iv_hex(cc, hex),
           SNITUN_RESULT_INVALID_ARGUMENT);
    memset(hex, 'a', 34);
    hex[34] = '\0';
    EXPECT(snitun_client_config_set_aes_iv_hex(cc, hex),
           SNITUN_RESULT_INVALID_ARGUMENT);
    memset(hex, 'a', 64);
    hex[64] = '\0';
    EXPECT(snitun_client_config_set_aes_iv_hex(cc, hex),
           SNITUN_RESULT_INVALID_ARGUMENT);
    OK(snitun_client_config_set_aes_key_hex(cc, hex));
    hex[32] = '\0';
    OK(snitun_client_config_set_aes_iv_hex(cc, hex));

    /* Cipher, protocol version. */
    EXPECT(snitun_client_config_set_cipher(cc, "aes-xyz"),
           SNITUN_RESULT_INVALID_ARGUMENT);
    EXPECT(snitun_client_config_set_cipher(cc, ""),
           SNITUN_RESULT_INVALID_ARGUMENT);
    OK(snitun_client_config_set_cipher(cc, "aes-gcm"));
    OK(snitun_client_config_set_cipher(cc, "aes-cbc"));
    EXPECT(snitun_client_config_set_protocol_version(
               cc, SNITUN_PROTOCOL_VERSION + 1),
           SNITUN_RESULT_INVALID_ARGUMENT);
    EXPECT(snitun_client_config_set_protocol_version(cc, 255),
           SNITUN_RESULT_INVALID_ARGUMENT);

    /* Endpoints. */
    for (size_t i = 0; i < sizeof bad_endpoints / sizeof bad_endpoints[0];
         i++) {
        expect_err_at(__LINE__, bad_endpoints[i],
                      snitun_client_config_set_endpoint(cc, bad_endpoints[i]),
                      SNITUN_RESULT_INVALID_ARGUMENT);
    }

    /* Networks; allow and block lists exclude each other. */
    for (size_t i = 0; i < sizeof bad_networks / sizeof bad_networks[0];
         i++) {
        expect_err_at(
            __LINE__, bad_networks[i],
            snitun_client_config_add_allowed_network(cc, bad_networks[i]),
            SNITUN_RESULT_INVALID_ARGUMENT);
        expect_err_at(
            __LINE__, bad_networks[i],
            snitun_client_config_add_blocked_network(cc, bad_networks[i]),
            SNITUN_RESULT_INVALID_ARGUMENT);
    }
    OK(snitun_client_config_add_allowed_network(cc, "127.0.0.0/8"));
    EXPECT(snitun_client_config_add_blocked_network(cc, "10.0.0.0/8"),
           SNITUN_RESULT_INVALID_CONFIG);
    snitun_client_config *cc2 = NULL;
    OK(snitun_client_config_new("127.0.0.1:1", &cc2));
    OK(snitun_client_config_add_blocked_network(cc2, "2001:db8::/32"));
    EXPECT(snitun_client_config_add_allowed_network(cc2, "10.0.0.0/8"),
           SNITUN_RESULT_INVALID_CONFIG);
    snitun_client_config_free(cc2);

    /* Reconnect policy and connect timeout. */
    EXPECT(snitun_client_config_set_reconnect(cc, 0, 1000, 2.0, 0.2),
           SNITUN_RESULT_INVALID_ARGUMENT);
    EXPECT(snitun_client_config_set_reconnect(cc, 2000, 1000, 2.0, 0.2),
           SNITUN_RESULT_INVALID_ARGUMENT);
    EXPECT(snitun_client_config_set_reconnect(cc, 1000, 2000, 0.5, 0.2),
           SNITUN_RESULT_INVALID_ARGUMENT);
    EXPECT(snitun_client_config_set_reconnect(cc, 1000, 2000, NAN, 0.2),
           SNITUN_RESULT_INVALID_ARGUMENT);
    EXPECT(snitun_client_config_set_reconnect(cc, 1000, 2000, INFINITY, 0.2),
           SNITUN_RESULT_INVALID_ARGUMENT);
    EXPECT(snitun_client_config_set_reconnect(cc, 1000, 2000, 2.0, 1.5),
           SNITUN_RESULT_INVALID_ARGUMENT);
    EXPECT(snitun_client_config_set_reconnect(cc, 1000, 2000, 2.0, -0.1),
           SNITUN_RESULT_INVALID_ARGUMENT);
    EXPECT(snitun_client_config_set_reconnect(cc, 1000, 2000, 2.0, NAN),
           SNITUN_RESULT_INVALID_ARGUMENT);
    OK(snitun_client_config_set_reconnect(cc, 1000, 300000, 2.0, 0.2));
    OK(snitun_client_config_disable_reconnect(cc));
    EXPECT(snitun_client_config_set_connect_timeout(cc, 0),
           SNITUN_RESULT_INVALID_ARGUMENT);

    /* Connecting: NULLs, incomplete config. */
    snitun_client *client = NULL;
    EXPECT_OUT_NULL(snitun_client_connect(NULL, 1000, &client),
                    SNITUN_RESULT_NULL_ARGUMENT, client);
    EXPECT(snitun_client_connect(cc, 1000, NULL), SNITUN_RESULT_NULL_ARGUMENT);
    /* No token, no endpoint. */
    EXPECT_OUT_NULL(snitun_client_connect(cc, 1000, &client),
                    SNITUN_RESULT_INVALID_CONFIG, client);
    OK(snitun_client_config_set_token(cc, "dG9rZW4="));
    EXPECT_OUT_NULL(snitun_client_connect(cc, 1000, &client),
                    SNITUN_RESULT_INVALID_CONFIG, client);

    /* Functions on a NULL client. */
    char buf[16];
    size_t n = 0;
    CHECK(!snitun_client_is_connected(NULL), "is_connected(NULL)");
    EXPECT(snitun_client_disconnect(NULL, 0), SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_client_wait(NULL, 0), SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_client_end_reason(NULL, buf, sizeof buf, &n),
           SNITUN_RESULT_NULL_ARGUMENT);

    snitun_client_config_free(cc);
}

/* A port on 127.0.0.1 where nobody listens; its socket stays bound (not
 * listening) so that no one else takes it. */
static int closed_port(uint16_t *port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        return -1;
    }
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        close(fd);
        return -1;
    }
    *port = ntohs(a.sin_port);
    return fd;
}

static void test_connect_refused(void) {
    uint16_t port = 0;
    int fd = closed_port(&port);
    CHECK(fd >= 0, "cannot bind a port");
    if (fd < 0) {
        return;
    }
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", (unsigned)port);
    snitun_client_config *cc = NULL;
    OK(snitun_client_config_new(addr, &cc));
    OK(snitun_client_config_set_token(cc, "dG9rZW4="));
    uint8_t key[SNITUN_AES_KEY_LEN] = {0};
    OK(snitun_client_config_set_aes_key(cc, key, sizeof key));
    OK(snitun_client_config_set_aes_iv(cc, key, SNITUN_AES_IV_LEN));
    OK(snitun_client_config_set_endpoint(cc, "127.0.0.1:1"));
    OK(snitun_client_config_set_connect_timeout(cc, 5000));
    snitun_client *client = NULL;
    EXPECT_OUT_NULL(snitun_client_connect(cc, WAIT_MS, &client),
                    SNITUN_RESULT_IO, client);
    snitun_client_free(client);
    snitun_client_config_free(cc);
    close(fd);
}

static void test_server_errors(void) {
    snitun_server_config *sc = NULL;
    snitun_server *server = NULL;
    const char *bad_addrs[] = {"nonsense", "1.2.3.4", "host:99999",
                               "127.0.0.1:99999", "", "localhost:0"};

    EXPECT(snitun_server_config_new(NULL), SNITUN_RESULT_NULL_ARGUMENT);
    OK(snitun_server_config_new(&sc));

    /* NULL handle for every setter. */
    EXPECT(snitun_server_config_add_fernet_key(NULL, fernet_key),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_server_config_add_sni_listen(NULL, "127.0.0.1:0"),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_server_config_add_peer_listen(NULL, "127.0.0.1:0"),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_server_config_add_listen(NULL, "127.0.0.1:0"),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_server_config_set_proxy_protocol(NULL, true),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_server_config_set_throttling(NULL, 10),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_server_config_set_peer_event_callback(NULL, NULL, NULL),
           SNITUN_RESULT_NULL_ARGUMENT);
    /* NULL strings. */
    EXPECT(snitun_server_config_add_fernet_key(sc, NULL),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_server_config_add_sni_listen(sc, NULL),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_server_config_add_peer_listen(sc, NULL),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_server_config_add_listen(sc, NULL),
           SNITUN_RESULT_NULL_ARGUMENT);
    /* Non-UTF-8. */
    EXPECT(snitun_server_config_add_fernet_key(sc, BAD_UTF8),
           SNITUN_RESULT_INVALID_UTF8);
    EXPECT(snitun_server_config_add_sni_listen(sc, BAD_UTF8),
           SNITUN_RESULT_INVALID_UTF8);
    EXPECT(snitun_server_config_add_peer_listen(sc, BAD_UTF8),
           SNITUN_RESULT_INVALID_UTF8);
    EXPECT(snitun_server_config_add_listen(sc, BAD_UTF8),
           SNITUN_RESULT_INVALID_UTF8);
    /* Bad Fernet keys. */
    EXPECT(snitun_server_config_add_fernet_key(sc, ""),
           SNITUN_RESULT_INVALID_ARGUMENT);
    EXPECT(snitun_server_config_add_fernet_key(sc, "not a key"),
           SNITUN_RESULT_INVALID_ARGUMENT);
    EXPECT(snitun_server_config_add_fernet_key(
               sc, "********************************************"),
           SNITUN_RESULT_INVALID_ARGUMENT);
    /* Bad addresses. */
    for (size_t i = 0; i < sizeof bad_addrs / sizeof bad_addrs[0]; i++) {
        expect_err_at(__LINE__, bad_addrs[i],
                      snitun_server_config_add_sni_listen(sc, bad_addrs[i]),
                      SNITUN_RESULT_INVALID_ARGUMENT);
        expect_err_at(__LINE__, bad_addrs[i],
                      snitun_server_config_add_peer_listen(sc, bad_addrs[i]),
                      SNITUN_RESULT_INVALID_ARGUMENT);
        expect_err_at(__LINE__, bad_addrs[i],
                      snitun_server_config_add_listen(sc, bad_addrs[i]),
                      SNITUN_RESULT_INVALID_ARGUMENT);
    }

    /* Starting incomplete configs. */
    EXPECT_OUT_NULL(snitun_server_start(NULL, &server),
                    SNITUN_RESULT_NULL_ARGUMENT, server);
    EXPECT(snitun_server_start(sc, NULL), SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT_OUT_NULL(snitun_server_start(sc, &server),
                    SNITUN_RESULT_INVALID_CONFIG, server); /* nothing */
    OK(snitun_server_config_add_fernet_key(sc, fernet_key));
    EXPECT_OUT_NULL(snitun_server_start(sc, &server),
                    SNITUN_RESULT_INVALID_CONFIG, server); /* no address */
    OK(snitun_server_config_add_sni_listen(sc, "127.0.0.1:0"));
    EXPECT_OUT_NULL(snitun_server_start(sc, &server),
                    SNITUN_RESULT_INVALID_CONFIG, server); /* no peer */
    snitun_server_config_free(sc);

    snitun_server_config *sc2 = NULL;
    OK(snitun_server_config_new(&sc2));
    OK(snitun_server_config_add_peer_listen(sc2, "127.0.0.1:0"));
    EXPECT_OUT_NULL(snitun_server_start(sc2, &server),
                    SNITUN_RESULT_INVALID_CONFIG, server); /* no key */
    OK(snitun_server_config_add_fernet_key(sc2, fernet_key));
    EXPECT_OUT_NULL(snitun_server_start(sc2, &server),
                    SNITUN_RESULT_INVALID_CONFIG, server); /* no SNI */
    snitun_server_config_free(sc2);

    /* A port in use. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        listen(fd, 1) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0) {
        char addr[64];
        snprintf(addr, sizeof addr, "127.0.0.1:%u",
                 (unsigned)ntohs(a.sin_port));
        snitun_server_config *sc3 = NULL;
        OK(snitun_server_config_new(&sc3));
        OK(snitun_server_config_add_fernet_key(sc3, fernet_key));
        OK(snitun_server_config_add_listen(sc3, addr));
        EXPECT_OUT_NULL(snitun_server_start(sc3, &server), SNITUN_RESULT_IO,
                        server);
        snitun_server_free(server);
        snitun_server_config_free(sc3);
    } else {
        CHECK(0, "cannot bind a listening socket");
    }
    if (fd >= 0) {
        close(fd);
    }

    /* Functions on a NULL server and list. */
    uint16_t port = 0;
    char buf[8];
    size_t n = 0;
    snitun_string_list *list = NULL;
    EXPECT(snitun_server_stop(NULL, 0), SNITUN_RESULT_NULL_ARGUMENT);
    CHECK(snitun_server_peer_count(NULL) == 0, "peer_count(NULL)");
    EXPECT_OUT_NULL(snitun_server_peer_hostnames(NULL, &list),
                    SNITUN_RESULT_NULL_ARGUMENT, list);
    EXPECT_OUT_NULL(snitun_server_hostnames(NULL, &list),
                    SNITUN_RESULT_NULL_ARGUMENT, list);
    CHECK(snitun_server_bound_count(NULL, SNITUN_LISTENER_KIND_SNI) == 0,
          "bound_count(NULL)");
    EXPECT(snitun_server_bound_port(NULL, SNITUN_LISTENER_KIND_SNI, 0, &port),
           SNITUN_RESULT_NULL_ARGUMENT);
    EXPECT(snitun_server_bound_addr(NULL, SNITUN_LISTENER_KIND_SNI, 0, buf,
                                    sizeof buf, &n),
           SNITUN_RESULT_NULL_ARGUMENT);
    CHECK(snitun_string_list_len(NULL) == 0, "string_list_len(NULL)");
    CHECK(snitun_string_list_get(NULL, 0) == NULL, "string_list_get(NULL)");
}

/* ---------------------------------------------------------------------- */
/* The tunnel                                                              */
/* ---------------------------------------------------------------------- */

static void set_timeouts(int fd) {
    struct timeval tv = {IO_TIMEOUT_S, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static int write_all(int fd, const uint8_t *p, size_t n) {
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

struct echo {
    int listen_fd;
    atomic_int stop;
    atomic_int served;
};

static void *echo_main(void *arg) {
    struct echo *e = arg;
    uint8_t buf[16384];
    while (!atomic_load(&e->stop)) {
        struct pollfd p = {e->listen_fd, POLLIN, 0};
        int r = poll(&p, 1, 100);
        if (r <= 0) {
            continue;
        }
        int fd = accept(e->listen_fd, NULL, NULL);
        if (fd < 0) {
            continue;
        }
        set_timeouts(fd);
        for (;;) {
            ssize_t got = recv(fd, buf, sizeof buf, 0);
            if (got < 0 && errno == EINTR) {
                continue;
            }
            if (got <= 0 || write_all(fd, buf, (size_t)got) != 0) {
                break;
            }
        }
        shutdown(fd, SHUT_WR);
        close(fd);
        atomic_fetch_add(&e->served, 1);
    }
    return NULL;
}

/* A TLS ClientHello record naming `host` (the layout of the Rust tests'
 * helper: SNI, supported_versions TLS 1.3, 120 bytes of padding). */
static size_t client_hello(const char *host, uint8_t *out) {
    size_t hl = strlen(host);
    uint8_t exts[512];
    size_t e = 0;
    /* server_name */
    exts[e++] = 0;
    exts[e++] = 0;
    exts[e++] = (uint8_t)((hl + 5) >> 8);
    exts[e++] = (uint8_t)(hl + 5);
    exts[e++] = (uint8_t)((hl + 3) >> 8);
    exts[e++] = (uint8_t)(hl + 3);
    exts[e++] = 0;
    exts[e++] = (uint8_t)(hl >> 8);
    exts[e++] = (uint8_t)hl;
    memcpy(exts + e, host, hl);
    e += hl;
    /* supported_versions: TLS 1.3 */
    const uint8_t sv[] = {0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04};
    memcpy(exts + e, sv, sizeof sv);
    e += sizeof sv;
    /* padding */
    exts[e++] = 0x00;
    exts[e++] = 0x15;
    exts[e++] = 0;
    exts[e++] = 120;
    memset(exts + e, 0, 120);
    e += 120;

    uint8_t hello[1024];
    size_t h = 0;
    hello[h++] = 3;
    hello[h++] = 3;
    memset(hello + h, 0x5a, 32); /* random */
    h += 32;
    hello[h++] = 32; /* session id */
    memset(hello + h, 0x11, 32);
    h += 32;
    const uint8_t suites[] = {0x00, 0x04, 0x13, 0x01, 0x13, 0x02, 0x01, 0x00};
    memcpy(hello + h, suites, sizeof suites); /* suites, compression */
    h += sizeof suites;
    hello[h++] = (uint8_t)(e >> 8);
    hello[h++] = (uint8_t)e;
    memcpy(hello + h, exts, e);
    h += e;

    size_t o = 0;
    out[o++] = 0x16;
    out[o++] = 3;
    out[o++] = 1;
    out[o++] = (uint8_t)((h + 4) >> 8);
    out[o++] = (uint8_t)(h + 4);
    out[o++] = 1; /* ClientHello */
    out[o++] = 0;
    out[o++] = (uint8_t)(h >> 8);
    out[o++] = (uint8_t)h;
    memcpy(out + o, hello, h);
    return o + h;
}

struct sender {
    int fd;
    const uint8_t *data;
    size_t len;
    int rc;
};

static void *sender_main(void *arg) {
    struct sender *s = arg;
    s->rc = write_all(s->fd, s->data, s->len);
    return NULL;
}

static atomic_int connected_calls;
static atomic_int disconnected_calls;
static atomic_int disconnected_reconnect;
static atomic_int disconnected_shut_down;
static atomic_int peer_connected;
static atomic_int peer_disconnected;
static atomic_int log_records;

static void on_connected(void *userdata) {
    CHECK(userdata == &connected_calls, "connected: bad userdata");
    atomic_fetch_add(&connected_calls, 1);
}

static void on_disconnected(void *userdata, const char *reason,
                            bool will_reconnect) {
    CHECK(userdata == &disconnected_calls, "disconnected: bad userdata");
    if (reason != NULL && strcmp(reason, "shut down") == 0) {
        atomic_fetch_add(&disconnected_shut_down, 1);
    }
    if (will_reconnect) {
        atomic_fetch_add(&disconnected_reconnect, 1);
    }
    atomic_fetch_add(&disconnected_calls, 1);
}

static void on_endpoint_error(void *userdata, const char *endpoint,
                              const char *caller, const char *error) {
    (void)userdata;
    printf("FAIL endpoint error: %s %s %s\n", endpoint, caller, error);
    fflush(stdout);
    failures++;
}

static void on_peer_event(void *userdata, snitun_peer_event_kind kind,
                          const char *hostname, const char *detail) {
    (void)detail;
    CHECK(userdata == &peer_connected, "peer event: bad userdata");
    CHECK(hostname != NULL && strcmp(hostname, HOST) == 0,
          "peer event for %s", hostname ? hostname : "(null)");
    if (kind == SNITUN_PEER_EVENT_KIND_CONNECTED) {
        atomic_fetch_add(&peer_connected, 1);
    } else if (kind == SNITUN_PEER_EVENT_KIND_DISCONNECTED) {
        atomic_fetch_add(&peer_disconnected, 1);
    }
}

static void on_log(void *userdata, snitun_log_level level, const char *target,
                   const char *message) {
    (void)userdata;
    (void)level;
    (void)target;
    (void)message;
    atomic_fetch_add(&log_records, 1);
}

/* Wait (bounded) until *flag reaches want. */
static int wait_for(atomic_int *flag, int want) {
    for (int i = 0; i < WAIT_MS / 10; i++) {
        if (atomic_load(flag) >= want) {
            return 1;
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return atomic_load(flag) >= want;
}

static int has_string(const snitun_string_list *list, const char *s) {
    for (size_t i = 0; i < snitun_string_list_len(list); i++) {
        const char *v = snitun_string_list_get(list, i);
        if (v != NULL && strcmp(v, s) == 0) {
            return 1;
        }
    }
    return 0;
}

/* Send a ClientHello and PAYLOAD_LEN bytes to the SNI port; expect them
 * all back. */
static void call_through(uint16_t sni_port) {
    size_t total = 1024 + PAYLOAD_LEN;
    uint8_t *sent = malloc(total);
    uint8_t *back = malloc(total);
    CHECK(sent != NULL && back != NULL, "malloc");
    if (sent == NULL || back == NULL) {
        free(sent);
        free(back);
        return;
    }
    size_t hl = client_hello(HOST, sent);
    for (size_t i = 0; i < PAYLOAD_LEN; i++) {
        sent[hl + i] = (uint8_t)(i * 29 + 7);
    }
    total = hl + PAYLOAD_LEN;

    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(sni_port);
    set_timeouts(fd);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        CHECK(0, "caller cannot connect to the SNI port: %s", strerror(errno));
        if (fd >= 0) {
            close(fd);
        }
        free(sent);
        free(back);
        return;
    }
    struct sender s = {fd, sent, total, -1};
    pthread_t t;
    int started = pthread_create(&t, NULL, sender_main, &s) == 0;
    CHECK(started, "pthread_create");
    size_t got = 0;
    while (started && got < total) {
        ssize_t r = recv(fd, back + got, total - got, 0);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            CHECK(0, "caller: read ended after %zu of %zu bytes (%s)", got,
                  total, r < 0 ? strerror(errno) : "EOF");
            break;
        }
        got += (size_t)r;
    }
    if (started) {
        pthread_join(t, NULL);
        CHECK(s.rc == 0, "caller: sending failed");
    }
    CHECK(got == total && memcmp(sent, back, total) == 0,
          "echoed bytes differ (%zu of %zu back)", got, total);
    shutdown(fd, SHUT_RDWR);
    close(fd);
    free(sent);
    free(back);
}

static void test_tunnel(void) {
    /* The echo endpoint. */
    struct echo echo;
    echo.listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    atomic_init(&echo.stop, 0);
    atomic_init(&echo.served, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    if (echo.listen_fd < 0 ||
        bind(echo.listen_fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        listen(echo.listen_fd, 8) != 0 ||
        getsockname(echo.listen_fd, (struct sockaddr *)&a, &alen) != 0) {
        CHECK(0, "echo endpoint: %s", strerror(errno));
        return;
    }
    uint16_t echo_port = ntohs(a.sin_port);
    pthread_t echo_thread;
    if (pthread_create(&echo_thread, NULL, echo_main, &echo) != 0) {
        CHECK(0, "pthread_create echo");
        close(echo.listen_fd);
        return;
    }

    OK(snitun_set_log_callback(on_log, NULL, SNITUN_LOG_LEVEL_INFO));

    /* The server. */
    snitun_server_config *sc = NULL;
    snitun_server *server = NULL;
    OK(snitun_server_config_new(&sc));
    OK(snitun_server_config_add_fernet_key(sc, fernet_key));
    OK(snitun_server_config_add_sni_listen(sc, "127.0.0.1:0"));
    OK(snitun_server_config_add_peer_listen(sc, "127.0.0.1:0"));
    OK(snitun_server_config_set_peer_event_callback(sc, on_peer_event,
                                                    &peer_connected));
    OK(snitun_server_start(sc, &server));
    snitun_server_config_free(sc);
    uint16_t sni_port = 0, peer_port = 0;
    if (server != NULL) {
        CHECK(snitun_server_bound_count(server, SNITUN_LISTENER_KIND_SNI) == 1,
              "one SNI listener");
        CHECK(snitun_server_bound_count(server, SNITUN_LISTENER_KIND_PEER) ==
                  1,
              "one peer listener");
        CHECK(snitun_server_bound_count(server, SNITUN_LISTENER_KIND_SINGLE) ==
                  0,
              "no single listener");
        CHECK(snitun_server_bound_count(server, 7) == 0, "unknown kind count");
        OK(snitun_server_bound_port(server, SNITUN_LISTENER_KIND_SNI, 0,
                                    &sni_port));
        OK(snitun_server_bound_port(server, SNITUN_LISTENER_KIND_PEER, 0,
                                    &peer_port));
        CHECK(sni_port != 0 && peer_port != 0, "bound ports are 0");
        uint16_t p = 0;
        EXPECT(snitun_server_bound_port(server, 7, 0, &p),
               SNITUN_RESULT_INVALID_ARGUMENT);
        EXPECT(snitun_server_bound_port(server, SNITUN_LISTENER_KIND_SNI, 1,
                                        &p),
               SNITUN_RESULT_INVALID_ARGUMENT);
        EXPECT(snitun_server_bound_port(server, SNITUN_LISTENER_KIND_SINGLE, 0,
                                        &p),
               SNITUN_RESULT_INVALID_ARGUMENT);
        EXPECT(snitun_server_bound_port(server, SNITUN_LISTENER_KIND_SNI, 0,
                                        NULL),
               SNITUN_RESULT_NULL_ARGUMENT);
        char addr[64], small[4];
        size_t n = 0, m = 0;
        OK(snitun_server_bound_addr(server, SNITUN_LISTENER_KIND_SNI, 0, NULL,
                                    0, &n));
        memset(small, 'x', sizeof small);
        EXPECT(snitun_server_bound_addr(server, SNITUN_LISTENER_KIND_SNI, 0,
                                        small, sizeof small, &m),
               SNITUN_RESULT_BUFFER_TOO_SMALL);
        CHECK(m == n && small[0] == 'x', "bound_addr too small");
        EXPECT(snitun_server_bound_addr(server, SNITUN_LISTENER_KIND_SNI, 0,
                                        NULL, 0, NULL),
               SNITUN_RESULT_NULL_ARGUMENT);
        EXPECT(snitun_server_bound_addr(server, 7, 0, addr, sizeof addr, &n),
               SNITUN_RESULT_INVALID_ARGUMENT);
        EXPECT(snitun_server_bound_addr(server, SNITUN_LISTENER_KIND_PEER, 3,
                                        addr, sizeof addr, &n),
               SNITUN_RESULT_INVALID_ARGUMENT);
        OK(snitun_server_bound_addr(server, SNITUN_LISTENER_KIND_SNI, 0, addr,
                                    sizeof addr, &n));
        char want[64];
        snprintf(want, sizeof want, "127.0.0.1:%u", (unsigned)sni_port);
        CHECK(strcmp(addr, want) == 0, "bound_addr %s, want %s", addr, want);
        snitun_string_list *list = NULL;
        EXPECT(snitun_server_peer_hostnames(server, NULL),
               SNITUN_RESULT_NULL_ARGUMENT);
        EXPECT(snitun_server_hostnames(server, NULL),
               SNITUN_RESULT_NULL_ARGUMENT);
        OK(snitun_server_peer_hostnames(server, &list));
        CHECK(snitun_string_list_len(list) == 0, "peers before any client");
        snitun_string_list_free(list);
    }

    /* The token. */
    snitun_token_config *tc = NULL;
    snitun_token *tok = NULL;
    OK(snitun_token_config_new(&tc));
    OK(snitun_token_config_set_fernet_key(tc, fernet_key));
    OK(snitun_token_config_set_hostname(tc, HOST));
    OK(snitun_token_config_add_alias(tc, ALIAS));
    OK(snitun_token_config_set_valid_seconds(tc, 3600));
    OK(snitun_token_config_set_cipher(tc, "aes-gcm"));
    OK(snitun_token_config_set_protocol_version(tc, SNITUN_PROTOCOL_VERSION));
    OK(snitun_token_mint(tc, &tok));
    snitun_token_config_free(tc);

    /* The client. */
    snitun_client *client = NULL;
    if (server != NULL && tok != NULL) {
        size_t n = 0;
        OK(snitun_token_string(tok, NULL, 0, &n));
        char *token = malloc(n + 1);
        uint8_t key[SNITUN_AES_KEY_LEN], iv[SNITUN_AES_IV_LEN];
        char key_hex[2 * SNITUN_AES_KEY_LEN + 1];
        char iv_hex[2 * SNITUN_AES_IV_LEN + 1];
        CHECK(token != NULL, "malloc");
        if (token != NULL) {
            OK(snitun_token_string(tok, token, n + 1, NULL));
        }
        OK(snitun_token_aes_key(tok, key, sizeof key));
        OK(snitun_token_aes_iv(tok, iv, sizeof iv));
        OK(snitun_token_aes_key_hex(tok, key_hex, sizeof key_hex, NULL));
        OK(snitun_token_aes_iv_hex(tok, iv_hex, sizeof iv_hex, NULL));

        char server_addr[64], endpoint[64];
        snprintf(server_addr, sizeof server_addr, "127.0.0.1:%u",
                 (unsigned)peer_port);
        snprintf(endpoint, sizeof endpoint, "127.0.0.1:%u",
                 (unsigned)echo_port);
        snitun_client_config *cc = NULL;
        OK(snitun_client_config_new(server_addr, &cc));
        OK(snitun_client_config_set_token(cc, token != NULL ? token : ""));
        /* The hex form first, then the raw bytes (the same values). */
        OK(snitun_client_config_set_aes_key_hex(cc, key_hex));
        OK(snitun_client_config_set_aes_iv_hex(cc, iv_hex));
        OK(snitun_client_config_set_aes_key(cc, key, sizeof key));
        OK(snitun_client_config_set_aes_iv(cc, iv, sizeof iv));
        OK(snitun_client_config_set_cipher(cc, "aes-gcm"));
        OK(snitun_client_config_set_protocol_version(cc,
                                                     SNITUN_PROTOCOL_VERSION));
        OK(snitun_client_config_set_endpoint(cc, endpoint));
        OK(snitun_client_config_add_allowed_network(cc, "127.0.0.0/8"));
        OK(snitun_client_config_set_throttling(cc, 0));
        OK(snitun_client_config_set_connect_timeout(cc, 10000));
        OK(snitun_client_config_set_connected_callback(cc, on_connected,
                                                       &connected_calls));
        OK(snitun_client_config_set_disconnected_callback(
            cc, on_disconnected, &disconnected_calls));
        OK(snitun_client_config_set_endpoint_error_callback(
            cc, on_endpoint_error, NULL));
        OK(snitun_client_connect(cc, WAIT_MS, &client));
        snitun_client_config_free(cc);
        if (token != NULL) {
            memset(token, 0, n);
            free(token);
        }
    }

    if (client != NULL) {
        phase("connected");
        CHECK(snitun_client_is_connected(client), "client not connected");
        CHECK(wait_for(&connected_calls, 1), "no connected callback");
        CHECK(wait_for(&peer_connected, 1), "no peer connected event");
        CHECK(snitun_server_peer_count(server) == 1, "peer count %zu",
              snitun_server_peer_count(server));
        snitun_string_list *list = NULL;
        OK(snitun_server_peer_hostnames(server, &list));
        CHECK(snitun_string_list_len(list) == 1 && has_string(list, HOST),
              "peer hostnames");
        CHECK(snitun_string_list_get(list, 1) == NULL,
              "string_list_get out of range");
        snitun_string_list_free(list);
        list = NULL;
        OK(snitun_server_hostnames(server, &list));
        CHECK(snitun_string_list_len(list) == 2 && has_string(list, HOST) &&
                  has_string(list, ALIAS),
              "hostnames with alias");
        snitun_string_list_free(list);

        char reason[64];
        size_t n = 0;
        EXPECT(snitun_client_end_reason(client, reason, sizeof reason, &n),
               SNITUN_RESULT_INVALID_STATE);
        EXPECT(snitun_client_wait(client, 0), SNITUN_RESULT_TIMEOUT);
        EXPECT(snitun_client_wait(client, 50), SNITUN_RESULT_TIMEOUT);

        call_through(sni_port);
        phase("echoed");

        OK(snitun_client_disconnect(client, WAIT_MS));
        OK(snitun_client_disconnect(client, WAIT_MS)); /* again: at once */
        OK(snitun_client_wait(client, 0));
        CHECK(!snitun_client_is_connected(client), "still connected");
        CHECK(atomic_load(&disconnected_calls) == 1 &&
                  atomic_load(&disconnected_shut_down) == 1 &&
                  atomic_load(&disconnected_reconnect) == 0,
              "disconnected callback: %d calls, %d shut down, %d reconnect",
              atomic_load(&disconnected_calls),
              atomic_load(&disconnected_shut_down),
              atomic_load(&disconnected_reconnect));
        EXPECT(snitun_client_end_reason(client, NULL, 0, NULL),
               SNITUN_RESULT_NULL_ARGUMENT);
        char small[4];
        memset(small, 'x', sizeof small);
        size_t m = 0;
        EXPECT(snitun_client_end_reason(client, small, sizeof small, &m),
               SNITUN_RESULT_BUFFER_TOO_SMALL);
        CHECK(m == strlen("shut down") && small[0] == 'x',
              "end_reason too small: %zu", m);
        OK(snitun_client_end_reason(client, reason, sizeof reason, &n));
        CHECK(strcmp(reason, "shut down") == 0, "end reason %s", reason);
        CHECK(wait_for(&peer_disconnected, 1), "no peer disconnected event");
        for (int i = 0; i < 200 && snitun_server_peer_count(server) != 0;
             i++) {
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        CHECK(snitun_server_peer_count(server) == 0, "peer left but count %zu",
              snitun_server_peer_count(server));
    }
    snitun_client_free(client);
    snitun_token_free(tok);

    if (server != NULL) {
        OK(snitun_server_stop(server, WAIT_MS));
        OK(snitun_server_stop(server, WAIT_MS)); /* again: at once */
        CHECK(snitun_server_peer_count(server) == 0, "peers after stop");
    }
    snitun_server_free(server);
    phase("stopped");

    OK(snitun_set_log_callback(NULL, NULL, SNITUN_LOG_LEVEL_OFF));
    CHECK(atomic_load(&log_records) > 0, "no log records");

    atomic_store(&echo.stop, 1);
    pthread_join(echo_thread, NULL);
    close(echo.listen_fd);
    CHECK(atomic_load(&echo.served) == 1, "echo served %d connections",
          atomic_load(&echo.served));
}

int main(void) {
    test_general();
    test_token_errors();
    test_client_config_errors();
    test_server_errors();
    phase("errors");
    test_connect_refused();
    phase("refused");
    test_tunnel();
    if (failures == 0) {
        printf("API_TEST OK\n");
    } else {
        printf("API_TEST FAILED %d\n", failures);
    }
    fflush(stdout);
    return failures == 0 ? 0 : 1;
}
