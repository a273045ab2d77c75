package policysync

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/kpath/kpath/internal/datapath"
	"github.com/kpath/kpath/internal/policy"
)

// The policy sets the syncer holds: written once per distinct set, shared
// by their endpoints, updated in place (removals first), pruned when
// unused.

// acquire returns the set for ps with one more user, writing it if new.
func (s *Syncer) acquire(ps policy.PolicySet) (*set, error) {
	if st, ok := s.sets[ps.Key]; ok {
		st.users++
		return st, nil
	}
	entries := s.store.Compile(ps)
	st := &set{key: ps.Key, ps: ps, entries: entries, users: 1}
	// A set the maps already hold with exactly these entries (the agent
	// restarted) is adopted as it is: nothing to write, nothing to cut.
	for id, have := range s.adopt {
		if maps.Equal(have.Entries, entries.Entries) && maps.Equal(have.CIDRs, entries.CIDRs) {
			st.id = id
			delete(s.adopt, id)
			s.sets[ps.Key], s.byID[id] = st, st
			return st, nil
		}
	}
	if err := s.fits(len(entries.Entries), len(entries.CIDRs)); err != nil {
		return nil, err
	}
	st.id = s.nextID
	s.nextID++
	if err := s.dp.ApplyPolicy([]datapath.PolicyChange{{Set: st.id, Add: entries.Entries, AddCIDR: entries.CIDRs}}); err != nil {
		_ = s.dp.ApplyPolicy([]datapath.PolicyChange{{Set: st.id, DeleteAll: true}})
		return nil, err
	}
	s.entries += len(entries.Entries)
	s.cidrs += len(entries.CIDRs)
	s.sets[ps.Key], s.byID[st.id] = st, st
	s.dirty()
	return st, nil
}

func (s *Syncer) fits(entries, cidrs int) error {
	if s.cap.Entries > 0 && s.entries+entries > s.cap.Entries {
		return fmt.Errorf("policy entries map full: %d in use + %d needed > %d (raise mapSizes.policyEntries)", s.entries, entries, s.cap.Entries)
	}
	if s.cap.CIDRs > 0 && s.cidrs+cidrs > s.cap.CIDRs {
		return fmt.Errorf("policy prefix map full: %d in use + %d needed > %d (raise mapSizes.policyCIDRs)", s.cidrs, cidrs, s.cap.CIDRs)
	}
	return nil
}

func (s *Syncer) release(st *set) {
	if st != nil {
		st.users--
	}
}

// recompileLocked brings a set's entries up to date in place: removals
// first, then additions. If the result would not fit, the set keeps its
// current entries.
func (s *Syncer) recompileLocked(st *set) error {
	next := s.store.Compile(st.ps)
	c := datapath.PolicyChange{Set: st.id}
	c.Add, c.Delete = diff(st.entries.Entries, next.Entries)
	c.AddCIDR, c.DelCIDR = diff(st.entries.CIDRs, next.CIDRs)
	if len(c.Delete)+len(c.Add)+len(c.DelCIDR)+len(c.AddCIDR) == 0 && next.IngressIsolated == st.entries.IngressIsolated && next.EgressIsolated == st.entries.EgressIsolated {
		st.entries, st.err = next, ""
		return nil
	}
	grow := len(next.Entries) - len(st.entries.Entries)
	growCIDR := len(next.CIDRs) - len(st.entries.CIDRs)
	if err := s.fits(max(grow, 0), max(growCIDR, 0)); err != nil {
		st.err = err.Error() + "; the last good policy stays"
		for _, ep := range s.endpoints {
			if ep.set == st {
				ep.status.Error = st.err
				s.onErr(ep.pod, errors.New(st.err))
			}
		}
		s.m.endpointError()
		return fmt.Errorf("policy set %d: %w", st.id, err)
	}
	// Group numbers of the CIDR prefixes may be reused for other rule
	// groups: a prefix that changes group is rewritten after the group's
	// entries, and removals come first, so a lookup in between finds a
	// subset of the new entries.
	if err := s.dp.ApplyPolicy([]datapath.PolicyChange{c}); err != nil {
		return fmt.Errorf("policy set %d: %w", st.id, err)
	}
	s.entries += grow
	s.cidrs += growCIDR
	st.entries = next
	st.err = ""
	s.dirty()
	return nil
}

// diff is what turns old into next: the keys to write (new or changed
// values) and the keys to delete.
func diff[K comparable, V comparable](old, next map[K]V) (add map[K]V, del []K) {
	add = map[K]V{}
	for k := range old {
		if _, ok := next[k]; !ok {
			del = append(del, k)
		}
	}
	for k, v := range next {
		if o, ok := old[k]; !ok || o != v {
			add[k] = v
		}
	}
	return add, del
}

// pruneLocked removes sets no endpoint uses any more, and what the maps
// held from before that no desired set adopted (after the first sync).
func (s *Syncer) pruneLocked() error {
	var errs []error
	for key, st := range s.sets {
		if st.users > 0 {
			continue
		}
		if err := s.dp.ApplyPolicy([]datapath.PolicyChange{deleteChange(st.id, st.entries)}); err != nil {
			errs = append(errs, err)
			continue
		}
		s.entries -= len(st.entries.Entries)
		s.cidrs -= len(st.entries.CIDRs)
		delete(s.sets, key)
		delete(s.byID, st.id)
		s.dirty()
	}
	if s.synced || len(errs) == 0 {
		for id, e := range s.adopt {
			if s.inUse(id) {
				continue
			}
			if err := s.dp.ApplyPolicy([]datapath.PolicyChange{deleteChange(id, e)}); err != nil {
				errs = append(errs, err)
				continue
			}
			s.entries -= len(e.Entries)
			s.cidrs -= len(e.CIDRs)
			delete(s.adopt, id)
			s.dirty()
		}
	}
	return errors.Join(errs...)
}

// inUse: an endpoint in the maps still points at set id.
func (s *Syncer) inUse(id uint32) bool {
	for _, e := range s.written {
		if e.Set == id {
			return true
		}
	}
	return false
}

func deleteChange(id uint32, e *policy.SetEntries) datapath.PolicyChange {
	return datapath.PolicyChange{Set: id, Delete: slices.Collect(maps.Keys(e.Entries)), DelCIDR: slices.Collect(maps.Keys(e.CIDRs))}
}
