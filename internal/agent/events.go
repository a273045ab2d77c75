package agent

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"

	"github.com/kpath/kpath/internal/k8s"
	"github.com/kpath/kpath/internal/model"
)

// podEvents records Warning events on pods whose policy the agent could
// not apply, where `kubectl describe pod` shows them. client-go's recorder
// aggregates and rate-limits repeats, and sends them off the caller's path.
type podEvents struct {
	rec record.EventRecorder
}

func newPodEvents(client k8s.Client, node string) (*podEvents, func()) {
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	return &podEvents{rec: b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "kpath-agent", Host: node})}, b.Shutdown
}

func (e *podEvents) policyNotApplied(pod model.PodKey, err error) {
	if e == nil {
		return
	}
	ref := &corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: pod.Namespace, Name: pod.Name}
	e.rec.Eventf(ref, corev1.EventTypeWarning, "PolicyNotApplied", "kpath-agent could not apply the pod's NetworkPolicy (it keeps its last good policy, or allows nothing): %v", err)
}
