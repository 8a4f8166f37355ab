# L2 side of "template-policy": a guest that is ready to be saved (its
# modules, virtio_balloon among them, loaded by l2-init) and idles.
echo LAB-TP-READY
while :; do sleep 1; done
