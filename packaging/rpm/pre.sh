# inferbox %pre: the system user inferboxd runs as (idempotent; kept on erase, since the
# state directory it owns is kept too).
getent group inferbox >/dev/null || groupadd -r inferbox
getent passwd inferbox >/dev/null || \
    useradd -r -g inferbox -d /var/lib/inferbox -M -s /sbin/nologin \
        -c "inferbox LLM inference daemon" inferbox
exit 0
