// Package reconcile keeps the datapath's services equal to what the
// Kubernetes objects ask for. It recomputes only the services that changed
// and revisits only the frontend addresses they claim, so a change costs
// the same with ten services or ten thousand; identical services are not
// rewritten, failures are retried with bounded backoff, and a periodic full
// resync recomputes everything and prunes frontends nobody owns (left by a
// crash or another writer).
package reconcile

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/kpath/kpath/internal/k8s"
	"github.com/kpath/kpath/internal/model"
	"github.com/kpath/kpath/internal/servicemap"
)

// Datapath is what the reconciler writes to.
type Datapath interface {
	// UpsertService writes a frontend. One equal to what the datapath
	// holds for it (and wrote whole) is not written again: the reconciler
	// keeps no copy of what it applied, and upserts every frontend of a
	// full sync.
	UpsertService(model.Service) error
	DeleteService(model.FrontendKey) error
	// Frontends lists the frontends the datapath holds.
	Frontends() ([]model.FrontendKey, error)
}

// Options configure a Reconciler.
type Options struct {
	NodeName  string
	ProxyName string
	Selection model.Selection
	// Off: another service proxy (kube-proxy) owns services; the datapath
	// is kept free of frontends, pruning any left from before.
	Off bool
	// MaxRetries is how often a failing service is retried with backoff
	// before waiting for its next change or the next full resync.
	MaxRetries int
	Metrics    *Metrics
	Log        *slog.Logger
}

// Reconciler applies the cache to the datapath.
type Reconciler struct {
	cache *k8s.Cache
	dp    Datapath
	opts  Options

	mu         sync.Mutex
	perService map[model.ServiceKey][]servicemap.Entry
	// claims lists, per frontend address, the services whose entries ask
	// for it, sorted: the first one owns it (servicemap.Merge's rule), the
	// others clash.
	claims map[model.L4Addr][]model.ServiceKey
	// applied are the frontends written, each with its backend count
	// (what they hold, the datapath has).
	applied map[model.FrontendKey]int
	// owners are the desired frontends, each with the service owning it
	// (its entry is in perService).
	owners map[model.FrontendKey]model.ServiceKey
	// unsettled are addresses whose last apply failed: revisited on every
	// sync until they succeed, whatever their services' retry state.
	unsettled map[model.L4Addr]bool
	attempts  map[model.ServiceKey]int
	retryAt   map[model.ServiceKey]time.Time
	problems  map[string]bool // last reported, to log only changes
	lastErr   error
	syncs     int
}

// New returns a reconciler; nothing happens until Sync or Run.
func New(c *k8s.Cache, dp Datapath, opts Options) *Reconciler {
	if opts.MaxRetries == 0 {
		opts.MaxRetries = 8
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	return &Reconciler{
		cache: c, dp: dp, opts: opts,
		perService: map[model.ServiceKey][]servicemap.Entry{},
		claims:     map[model.L4Addr][]model.ServiceKey{},
		unsettled:  map[model.L4Addr]bool{},
		applied:    map[model.FrontendKey]int{},
		owners:     map[model.FrontendKey]model.ServiceKey{},
		attempts:   map[model.ServiceKey]int{},
		retryAt:    map[model.ServiceKey]time.Time{},
		problems:   map[string]bool{},
	}
}

// Run syncs on every cache change, retries failures, and does a full
// resync (with pruning) every resync period, until ctx ends.
func (r *Reconciler) Run(ctx context.Context, resync time.Duration) {
	full := time.NewTicker(resync)
	defer full.Stop()
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.cache.Changed():
			r.Sync(false)
		case <-full.C:
			r.Sync(true)
		case <-retry.C:
			r.requeueDue()
		}
		if next, ok := r.nextRetry(); ok {
			retry.Reset(max(time.Until(next), time.Millisecond))
		}
	}
}

func (r *Reconciler) nextRetry() (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var next time.Time
	for _, t := range r.retryAt {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	return next, !next.IsZero()
}

func (r *Reconciler) requeueDue() {
	r.mu.Lock()
	var due []model.ServiceKey
	now := time.Now()
	for k, t := range r.retryAt {
		if !t.After(now) {
			due = append(due, k)
			delete(r.retryAt, k)
		}
	}
	r.mu.Unlock()
	for _, k := range due {
		r.cache.MarkDirty(k)
	}
}

// Sync recomputes the changed services (all of them with full) and applies
// the result. It returns the first error of this round, if any; failing
// services are retried on their own.
func (r *Reconciler) Sync(full bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	start := time.Now()
	dirty, all := r.cache.TakeDirty()
	if full || !all.IsZero() {
		for _, k := range r.cache.ServiceKeys() {
			if _, ok := dirty[k]; !ok {
				dirty[k] = all
			}
		}
		for k := range r.perService {
			if _, ok := dirty[k]; !ok {
				dirty[k] = all
			}
		}
	}
	if len(dirty) == 0 && !full {
		return nil
	}

	node := servicemap.Node{Name: r.opts.NodeName}
	if n := r.cache.Node(r.opts.NodeName); n != nil {
		node.Addrs, node.Zone = n.Addrs, n.Zone
	}
	// Recompute the dirty services; the addresses their old and new
	// entries claim are the only frontends this sync can change.
	affected := make(map[model.L4Addr]bool, len(r.unsettled))
	for a := range r.unsettled {
		affected[a] = true
	}
	clear(r.unsettled)
	var problems []servicemap.Problem
	for k := range dirty {
		for _, e := range r.perService[k] {
			affected[e.Frontend] = true
			r.unclaim(e.Frontend, k)
		}
		spec, sl := r.cache.Service(k)
		if spec == nil {
			delete(r.perService, k)
			continue
		}
		entries, p := servicemap.ForService(node, spec, sl, servicemap.Options{ProxyName: r.opts.ProxyName})
		for i := range entries {
			entries[i].Selection = r.opts.Selection
			affected[entries[i].Frontend] = true
			r.claim(entries[i].Frontend, k)
		}
		r.perService[k] = entries
		problems = append(problems, p...)
	}

	// Apply per affected address: its owner's frontends (a second,
	// external-scope one where traffic from outside is served), or none.
	failed := map[model.ServiceKey]error{}
	for a := range affected {
		want := map[bool]model.Service{}
		owner, owned := servicemap.Entry{}, false
		if claimants := r.claims[a]; len(claimants) > 0 && !r.opts.Off {
			owner, owned = r.entryAt(claimants[0], a)
		}
		if owned {
			want[false] = owner.Service
			if owner.Kind != servicemap.KindClusterIP {
				ext := owner.Service
				ext.External, ext.Backends = true, owner.External
				want[true] = ext
			}
			for _, k := range r.claims[a][1:] {
				e, _ := r.entryAt(k, a)
				problems = append(problems, servicemap.Problem{Service: k, Reason: servicemap.ReasonFrontendClash,
					Detail: fmt.Sprintf("%s frontend %s is already used by service %s; ignored", e.Kind, a, owner.Owner)})
			}
		}
		for _, external := range []bool{false, true} {
			fe := model.FrontendKey{L4Addr: a, External: external}
			svc, ok := want[external]
			if !ok {
				if _, had := r.applied[fe]; had {
					if err := r.dp.DeleteService(fe); err != nil {
						failed[r.owners[fe]] = err
						r.unsettled[a] = true
						r.opts.Log.Error("delete frontend", "frontend", fe, "error", err)
						continue
					}
					delete(r.applied, fe)
				}
				delete(r.owners, fe)
				continue
			}
			r.owners[fe] = owner.Owner
			if _, bad := failed[owner.Owner]; bad {
				r.unsettled[a] = true
				continue
			}
			if err := r.dp.UpsertService(svc); err != nil {
				failed[owner.Owner] = err
				r.unsettled[a] = true
				r.opts.Log.Error("apply service", "service", owner.Owner, "frontend", fe, "error", err)
				continue
			}
			r.applied[fe] = len(svc.Backends)
		}
	}
	if r.opts.Off {
		problems = nil // not ours to report: another proxy serves services
	}
	r.report(problems, full)
	if full {
		r.prune(r.owners)
	}

	// Bookkeeping: latency for what was applied, backoff for what was not.
	var firstErr error
	now := time.Now()
	for k, since := range dirty {
		if err, bad := failed[k]; bad {
			if firstErr == nil {
				firstErr = err
			}
			r.attempts[k]++
			if r.attempts[k] <= r.opts.MaxRetries {
				r.retryAt[k] = now.Add(backoff(r.attempts[k]))
			} else {
				r.opts.Log.Error("giving up on service until it changes or the next full resync", "service", k, "attempts", r.attempts[k]-1)
			}
			continue
		}
		delete(r.attempts, k)
		if !since.IsZero() {
			r.opts.Metrics.observeLatency(now.Sub(since))
		}
	}
	r.lastErr = firstErr
	r.syncs++
	if r.opts.Metrics != nil {
		backends := 0
		for _, n := range r.applied {
			backends += n
		}
		r.opts.Metrics.observeSync(time.Since(start), len(failed), r.cache.Pending(), len(r.applied), backends)
	}
	return firstErr
}

// claim records that service k's entries ask for address a.
func (r *Reconciler) claim(a model.L4Addr, k model.ServiceKey) {
	c := r.claims[a]
	if i, found := slices.BinarySearchFunc(c, k, model.ServiceKey.Compare); !found {
		r.claims[a] = slices.Insert(c, i, k)
	}
}

// unclaim drops service k's claim on address a.
func (r *Reconciler) unclaim(a model.L4Addr, k model.ServiceKey) {
	c := r.claims[a]
	if i, found := slices.BinarySearchFunc(c, k, model.ServiceKey.Compare); found {
		c = slices.Delete(c, i, i+1)
	}
	if len(c) == 0 {
		delete(r.claims, a)
		return
	}
	r.claims[a] = c
}

// entryAt is service k's entry for address a (claim keeps one for every
// claimed address).
func (r *Reconciler) entryAt(k model.ServiceKey, a model.L4Addr) (servicemap.Entry, bool) {
	for _, e := range r.perService[k] {
		if e.Frontend == a {
			return e, true
		}
	}
	return servicemap.Entry{}, false
}

// prune deletes frontends in the datapath that no service owns.
func (r *Reconciler) prune(desired map[model.FrontendKey]model.ServiceKey) {
	have, err := r.dp.Frontends()
	if err != nil {
		r.opts.Log.Error("list datapath frontends for pruning", "error", err)
		return
	}
	for _, fe := range have {
		if _, ok := desired[fe]; ok {
			continue
		}
		if err := r.dp.DeleteService(fe); err != nil {
			r.opts.Log.Error("prune frontend", "frontend", fe, "error", err)
			continue
		}
		delete(r.applied, fe)
		r.opts.Log.Info("pruned frontend no service owns", "frontend", fe)
	}
}

func (r *Reconciler) report(problems []servicemap.Problem, full bool) {
	seen := map[string]bool{}
	for _, p := range problems {
		s := p.String()
		seen[s] = true
		if !r.problems[s] {
			r.opts.Log.Warn("service input not usable", "service", p.Service, "reason", p.Reason, "detail", p.Detail)
			r.opts.Metrics.countProblem(p.Reason)
		}
	}
	if full {
		r.problems = seen
	} else {
		for s := range seen {
			r.problems[s] = true
		}
	}
}

func backoff(attempt int) time.Duration {
	d := 100 * time.Millisecond << min(attempt-1, 9)
	return min(d, 30*time.Second)
}

// Status summarises the reconciler for the agent's API.
type Status struct {
	Frontends int    `json:"frontends"`
	Services  int    `json:"services"`
	Syncs     int    `json:"syncs"`
	Retrying  int    `json:"retrying"`
	LastError string `json:"last_error,omitempty"`
}

// Status reports the reconciler's state.
func (r *Reconciler) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := Status{Frontends: len(r.applied), Services: len(r.perService), Syncs: r.syncs, Retrying: len(r.retryAt)}
	if r.lastErr != nil {
		s.LastError = r.lastErr.Error()
	}
	return s
}

// Entries returns the frontends as last computed, with their owners.
func (r *Reconciler) Entries() []servicemap.Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]servicemap.Entry, 0, len(r.owners))
	for k, owner := range r.owners {
		if k.External { // the external-scope twin is the same entry
			continue
		}
		if e, ok := r.entryAt(owner, k.L4Addr); ok {
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b servicemap.Entry) int { return a.Frontend.Compare(b.Frontend) })
	return out
}
