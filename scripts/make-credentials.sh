#!/usr/bin/env bash
# Credentials for a Flower deployment with TLS and SuperNode authentication.
#
#   scripts/make-credentials.sh DIR NODES [SUPERLINK_ADDRESS ...]
#
# Writes to DIR:
#   ca.crt, ca.key                  a certificate authority (keep ca.key offline)
#   superlink.crt, superlink.key    the SuperLink's TLS certificate, signed by the CA, valid for
#                                   localhost, 127.0.0.1 and every SUPERLINK_ADDRESS (IP or DNS name)
#   node-N, node-N.pub              one ECDSA P-384 key pair per SuperNode (OpenSSH format), N = 1..NODES
# SuperNodes need ca.crt and their own node-N; the SuperLink's operator registers each node-N.pub
# with `flwr supernode register`.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 DIR NODES [SUPERLINK_ADDRESS ...]" >&2
    exit 2
fi
dir=$1
nodes=$2
shift 2
mkdir -p "$dir"
cd "$dir"

san="DNS:localhost,IP:127.0.0.1,IP:::1"
for address in "$@"; do
    if [[ $address =~ ^[0-9.]+$ || $address == *:* ]]; then
        san="$san,IP:$address"
    else
        san="$san,DNS:$address"
    fi
done

openssl req -x509 -newkey rsa:3072 -sha256 -days 365 -nodes -subj "/CN=fedzip federation CA" \
    -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey rsa:3072 -sha256 -nodes -subj "/CN=superlink" \
    -keyout superlink.key -out superlink.csr 2>/dev/null
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
    "$san" > superlink.ext
openssl x509 -req -sha256 -days 365 -in superlink.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
    -extfile superlink.ext -out superlink.crt 2>/dev/null
rm -f superlink.csr superlink.ext ca.srl

for i in $(seq 1 "$nodes"); do
    rm -f "node-$i" "node-$i.pub"
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "supernode-$i" -f "node-$i"
done
chmod 600 ./*.key node-*
chmod 644 ./*.crt node-*.pub
echo "credentials in $PWD: CA, SuperLink certificate ($san), $nodes SuperNode key pair(s)"
