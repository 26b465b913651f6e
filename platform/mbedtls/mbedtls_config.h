/* Vantage's mbedTLS 3.6 configuration: TLS 1.3 (preferred) and 1.2, ECDHE/ECDSA on P-256 and
 * X25519, AES-GCM and ChaCha20-Poly1305, mutual X.509 authentication, session tickets. Nothing else. */
#ifndef VANTAGE_MBEDTLS_CONFIG_H
#define VANTAGE_MBEDTLS_CONFIG_H

/* Platform: Linux with /dev/urandom (getrandom) as the entropy source. */
#define MBEDTLS_HAVE_ASM
#define MBEDTLS_HAVE_TIME
#define MBEDTLS_HAVE_TIME_DATE
#define MBEDTLS_PLATFORM_C
#define MBEDTLS_NET_C
#define MBEDTLS_ENTROPY_C
#define MBEDTLS_CTR_DRBG_C
#define MBEDTLS_ERROR_C
#define MBEDTLS_VERSION_C
#define MBEDTLS_VERSION_FEATURES
/* Threads: TLS streams on different io_context threads share a TlsContext (ticket keys) and
 * PSA's process-wide key store and RNG; mbedTLS serialises those only with its own mutexes. */
#define MBEDTLS_THREADING_C
#define MBEDTLS_THREADING_PTHREAD

/* Symmetric ciphers: AES-GCM (fast where the core has AES instructions: x86 AES-NI, Armv8 CE)
 * and ChaCha20-Poly1305 (fast on ARM cores without them, as many armhf boards are). */
#define MBEDTLS_CIPHER_C
#define MBEDTLS_AES_C
#define MBEDTLS_AESNI_C
#define MBEDTLS_AESCE_C
#define MBEDTLS_GCM_C
#define MBEDTLS_CHACHA20_C
#define MBEDTLS_POLY1305_C
#define MBEDTLS_CHACHAPOLY_C

/* Hashes: SHA-256 (TLS_AES_128_GCM_SHA256, TLS_CHACHA20_POLY1305_SHA256, HMAC for client-IP
 * pseudonymisation) and SHA-384 (TLS_AES_256_GCM_SHA384, ecdsa-with-SHA384 certificates). */
#define MBEDTLS_MD_C
#define MBEDTLS_SHA224_C
#define MBEDTLS_SHA256_C
#define MBEDTLS_SHA384_C
#define MBEDTLS_SHA512_C
#define MBEDTLS_HKDF_C

/* Public key: ECDSA and ECDHE on P-256, X25519 for key exchange. */
#define MBEDTLS_BIGNUM_C
#define MBEDTLS_ECP_C
#define MBEDTLS_ECP_DP_SECP256R1_ENABLED
#define MBEDTLS_ECP_DP_CURVE25519_ENABLED
#define MBEDTLS_ECP_NIST_OPTIM
/* A larger window for arbitrary-point multiplication (verifying ECDSA, ECDHE on P-256): 15-25 %
 * faster full handshakes for about 3 KiB more scratch per operation, which is what a collector
 * facing a fleet's reconnect storm spends its CPU on (mbedTLS's default is 4). */
#define MBEDTLS_ECP_WINDOW_SIZE 6
#define MBEDTLS_ECDH_C
#define MBEDTLS_ECDSA_C
#define MBEDTLS_ECDSA_DETERMINISTIC
#define MBEDTLS_HMAC_DRBG_C
#define MBEDTLS_PK_C
#define MBEDTLS_PK_PARSE_C
#define MBEDTLS_PK_WRITE_C
#define MBEDTLS_ASN1_PARSE_C
#define MBEDTLS_ASN1_WRITE_C
#define MBEDTLS_OID_C
#define MBEDTLS_BASE64_C
#define MBEDTLS_PEM_PARSE_C

/* X.509: certificates and CRLs for mutual authentication against a pinned CA. */
#define MBEDTLS_X509_USE_C
#define MBEDTLS_X509_CRT_PARSE_C
#define MBEDTLS_X509_CRL_PARSE_C
/* Writing certificates: the fleet simulator (bench/fleet) mints thousands of agent certificates
 * in-process. Linked only into what calls it; the daemons do not. */
#define MBEDTLS_X509_CREATE_C
#define MBEDTLS_X509_CRT_WRITE_C
#define MBEDTLS_PEM_WRITE_C

/* PSA crypto is required by TLS 1.3 (HKDF, key exchange). */
#define MBEDTLS_PSA_CRYPTO_C
#define MBEDTLS_USE_PSA_CRYPTO
/* Without this the PSA key store is a fixed array of MBEDTLS_PSA_KEY_SLOT_COUNT (32) volatile
 * keys for the whole process, and every TLS 1.3 session holds several (traffic keys, ECDHE):
 * a collector then failed every handshake past its seventh concurrent agent. Dynamic: the store
 * grows with the sessions, bounded only by the collector's own session caps. */
#define MBEDTLS_PSA_KEY_STORE_DYNAMIC

/* TLS. */
#define MBEDTLS_SSL_TLS_C
#define MBEDTLS_SSL_CLI_C
#define MBEDTLS_SSL_SRV_C
#define MBEDTLS_SSL_PROTO_TLS1_2
#define MBEDTLS_SSL_PROTO_TLS1_3
#define MBEDTLS_SSL_TLS1_3_COMPATIBILITY_MODE
#define MBEDTLS_SSL_TLS1_3_KEY_EXCHANGE_MODE_EPHEMERAL_ENABLED
/* PSK-ephemeral is how TLS 1.3 resumes from a session ticket; plain PSK stays off (mbedTLS 3.6's
 * server ranks certificate handshakes above plain PSK anyway, so it could not choose it). */
#define MBEDTLS_SSL_TLS1_3_KEY_EXCHANGE_MODE_PSK_EPHEMERAL_ENABLED
/* How far the client's and the server's idea of a ticket's age may differ. The check guards 0-RTT
 * early data against replay, which this build does not have (MBEDTLS_SSL_EARLY_DATA is off); the
 * default of 6 s made resumption fail for agents that read their ticket late, e.g. a busy host
 * reading it seconds after the handshake, and they fell back to full handshakes in a storm. */
#define MBEDTLS_SSL_TLS1_3_TICKET_AGE_TOLERANCE 60000
#define MBEDTLS_KEY_EXCHANGE_ECDHE_ECDSA_ENABLED
#define MBEDTLS_SSL_KEEP_PEER_CERTIFICATE
#define MBEDTLS_SSL_SERVER_NAME_INDICATION
#define MBEDTLS_SSL_ENCRYPT_THEN_MAC
#define MBEDTLS_SSL_EXTENDED_MASTER_SECRET
#define MBEDTLS_SSL_SESSION_TICKETS
#define MBEDTLS_SSL_TICKET_C
#define MBEDTLS_SSL_ALPN
#define MBEDTLS_SSL_MAX_FRAGMENT_LENGTH
/* Outgoing records of at most 4 KiB: every session holds its output buffer for its whole life, and
 * a collector's 10,000 sessions send only acks (and, once, a handshake flight of about 1.5 KiB
 * with a P-256 chain; an ECDSA chain of up to three certificates fits). 12 KiB less per session.
 * The input buffer stays at the TLS maximum of 16 KiB, which any peer may send. */
#define MBEDTLS_SSL_OUT_CONTENT_LEN 4096

#endif /* VANTAGE_MBEDTLS_CONFIG_H */
