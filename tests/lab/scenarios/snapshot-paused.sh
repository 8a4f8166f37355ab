# lab-timeout: 280
# lab-needs: vmm
# As "snapshot", but saved after QMP stop: the restored VM comes back
# paused, prints nothing until QMP cont, then finishes.
. /lab/scenarios/snapshot.common.sh
snap_run 1
lab_pass "$SNAP_EVIDENCE"
