# lab-timeout: 280
# lab-needs: vmm
# A Linux guest counting and writing fsync'ed records to its disk is saved
# mid-run over QMP (running), the VMM is killed with SIGKILL, and a new
# vmm process restores it: the counter goes on from the saved value, the
# disk ends with every record exactly once.
. /lab/scenarios/snapshot.common.sh
snap_run 0
lab_pass "$SNAP_EVIDENCE"
