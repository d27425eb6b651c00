package hint

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/voldelta/voldelta/chunk"
)

// ChangedFile is a Source that reads the extents that changed since the
// last image sent from a file an orchestrator wrote (voldelta send
// --changed FILE), in a format ParseChanged reads. The orchestrator
// vouches for the base: BaseImage is "", and the extents are used against
// whatever generation the receiver committed, so they must cover every
// byte written since the image the last successful round sent.
type ChangedFile struct {
	Path string
}

// Name implements Source.
func (c ChangedFile) Name() string { return "changed-file" }

// BaseImage implements Source: "", the orchestrator vouches for the base.
func (c ChangedFile) BaseImage() string { return "" }

// Changed implements Source. A file that cannot be read or parsed fails
// the round (it is not ErrUnavailable): a list the orchestrator meant to
// give is never silently replaced by a guess.
func (c ChangedFile) Changed(ctx context.Context, newSize uint64) ([]chunk.Extent, error) {
	f, err := os.Open(c.Path)
	if err != nil {
		return nil, fmt.Errorf("changed-extent file: %w", err)
	}
	defer f.Close()
	exts, err := ParseChanged(f, newSize)
	if err != nil {
		return nil, fmt.Errorf("changed-extent file %s: %w", c.Path, err)
	}
	return exts, nil
}

// MaxChangedExtents bounds the extents ParseChanged accepts whatever the
// image size (16 Mi extents, 256 MiB once parsed): a list longer than that
// is better replaced by a full scan by whoever writes it.
const MaxChangedExtents = 1 << 24

// maxChangedLine bounds a line of the text format.
const maxChangedLine = 4096

// ParseChanged reads a list of the extents of an image of size bytes that
// changed since the last image sent, in one of two formats, told apart by
// the first character that is not white space:
//
//   - JSON ('[' or '{'): an array of objects with "offset" and "length", as
//     `rbd diff --format json` prints it,
//     [{"offset":0,"length":4194304,"exists":"true"}, …], where "exists"
//     (the string or boolean true or false, or absent) is ignored: an
//     extent that no longer exists was discarded and now reads zeros,
//     which is a change too; or an object {"extents":[…]} holding such an
//     array. Other keys in the extent objects are ignored, other keys of
//     the outer object are errors.
//   - Text: one "OFFSET LENGTH" pair per line, separated by spaces or tabs,
//     each a decimal number or a hexadecimal one with a 0x prefix; '#'
//     starts a comment to the end of the line; blank lines are ignored.
//
// The extents must be sorted by offset and must not overlap (rbd diff's
// are); extents that touch are merged. Every length must be non-zero and
// every extent within [0, size). There may be at most size/512+1 of them
// (a list finer than sectors is not a change list) and at most
// MaxChangedExtents. An input that holds nothing at all (empty, or only
// white space) is refused, because it is what a failed `rbd diff >FILE`
// leaves: say "nothing changed" with "[]" or a comment line. Errors wrap
// ErrInvalid and name the line (text) or the index (JSON) at fault.
//
// The result is never nil: an empty list means nothing changed.
func ParseChanged(r io.Reader, size uint64) ([]chunk.Extent, error) {
	p := &changedParser{size: size, max: min(size/512+1, MaxChangedExtents), out: []chunk.Extent{}}
	// The input is bounded too: a generous number of bytes per extent it
	// may hold, so that a huge file is not read to its end to be refused.
	limit := int64(p.max)*256 + 1<<20
	lr := &io.LimitedReader{R: r, N: limit + 1}
	br := bufio.NewReaderSize(lr, 64<<10)
	first, err := firstNonSpace(br)
	switch {
	case err == io.EOF:
		return nil, fmt.Errorf("%w: the list is empty; write [] (JSON) or a comment line (text) to say that nothing changed", ErrInvalid)
	case err != nil:
		return nil, err
	}
	if first == '[' || first == '{' {
		err = p.parseJSON(br)
	} else {
		err = p.parseText(br)
	}
	if lr.N == 0 {
		return nil, fmt.Errorf("%w: the list is longer than %d bytes, more than %d extents of an image of %d bytes can take", ErrInvalid, limit, p.max, size)
	}
	if err != nil {
		return nil, err
	}
	return p.out, nil
}

// firstNonSpace peeks at the first byte of br that is not white space.
func firstNonSpace(br *bufio.Reader) (byte, error) {
	for {
		c, err := br.ReadByte()
		if err != nil {
			return 0, err
		}
		switch c {
		case ' ', '\t', '\r', '\n', '\f', '\v':
			continue
		}
		return c, br.UnreadByte()
	}
}

type changedParser struct {
	size, max uint64
	n         uint64 // extents read, before merging
	end       uint64 // end of the last extent
	out       []chunk.Extent
}

// add validates one extent; where names it in errors.
func (p *changedParser) add(off, length uint64, where string) error {
	switch {
	case length == 0:
		return fmt.Errorf("%w: %s: extent at offset %d has length 0", ErrInvalid, where, off)
	case off+length < off:
		return fmt.Errorf("%w: %s: extent %d+%d overflows 64 bits", ErrInvalid, where, off, length)
	case off+length > p.size:
		return fmt.Errorf("%w: %s: extent %d+%d ends at %d, past the image size %d", ErrInvalid, where, off, length, off+length, p.size)
	case p.n > 0 && off < p.end:
		return fmt.Errorf("%w: %s: extent at offset %d starts before the end (%d) of the one before: extents must be sorted by offset and must not overlap", ErrInvalid, where, off, p.end)
	}
	p.n++
	if p.n > p.max {
		return fmt.Errorf("%w: %s: more than %d extents for an image of %d bytes", ErrInvalid, where, p.max, p.size)
	}
	p.out = appendExtent(p.out, off, off+length)
	p.end = off + length
	return nil
}

func (p *changedParser) parseText(br *bufio.Reader) error {
	sc := bufio.NewScanner(br)
	sc.Buffer(make([]byte, 0, maxChangedLine), maxChangedLine)
	for line := 1; sc.Scan(); line++ {
		s := sc.Text()
		if i := strings.IndexByte(s, '#'); i >= 0 {
			s = s[:i]
		}
		f := strings.Fields(s)
		if len(f) == 0 {
			continue
		}
		where := fmt.Sprintf("line %d", line)
		if len(f) != 2 {
			return fmt.Errorf("%w: %s: %q is not \"OFFSET LENGTH\"", ErrInvalid, where, strings.TrimSpace(s))
		}
		off, err := parseTextNumber(f[0])
		if err != nil {
			return fmt.Errorf("%w: %s: offset: %v", ErrInvalid, where, err)
		}
		length, err := parseTextNumber(f[1])
		if err != nil {
			return fmt.Errorf("%w: %s: length: %v", ErrInvalid, where, err)
		}
		if err := p.add(off, length, where); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return fmt.Errorf("%w: a line is longer than %d bytes", ErrInvalid, maxChangedLine)
		}
		return err
	}
	return nil
}

// parseTextNumber parses a decimal number or a hexadecimal one with a 0x
// prefix. (strconv's base 0 would read a leading 0 as octal and accept
// underscores.)
func parseTextNumber(s string) (uint64, error) {
	base, digits := 10, s
	if len(s) > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X') {
		base, digits = 16, s[2:]
	}
	if digits == "" || digits[0] == '+' || digits[0] == '-' {
		return 0, fmt.Errorf("%q is not a number", s)
	}
	v, err := strconv.ParseUint(digits, base, 64)
	if err != nil {
		if errors.Is(err, strconv.ErrRange) {
			return 0, fmt.Errorf("%q does not fit in 64 bits", s)
		}
		return 0, fmt.Errorf("%q is not a decimal or 0x-prefixed hexadecimal number", s)
	}
	return v, nil
}

// jsonExtent is one extent of the JSON format.
type jsonExtent struct {
	Offset *json.Number     `json:"offset"`
	Length *json.Number     `json:"length"`
	Exists *json.RawMessage `json:"exists"`
}

func (p *changedParser) parseJSON(r io.Reader) error {
	dec := json.NewDecoder(r)
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("%w: JSON: %v", ErrInvalid, err)
	}
	if tok == json.Delim('{') {
		seen := false
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				return fmt.Errorf("%w: JSON: %v", ErrInvalid, err)
			}
			if k != "extents" {
				return fmt.Errorf("%w: JSON: unknown key %q in the outer object (expected only \"extents\")", ErrInvalid, k)
			}
			if seen {
				return fmt.Errorf("%w: JSON: \"extents\" appears twice", ErrInvalid)
			}
			seen = true
			if tok, err = dec.Token(); err != nil {
				return fmt.Errorf("%w: JSON: %v", ErrInvalid, err)
			}
			if tok != json.Delim('[') {
				return fmt.Errorf("%w: JSON: \"extents\" is not an array", ErrInvalid)
			}
			if err := p.parseJSONArray(dec); err != nil {
				return err
			}
		}
		if !seen {
			return fmt.Errorf("%w: JSON: the object has no \"extents\" array", ErrInvalid)
		}
		if _, err := dec.Token(); err != nil { // '}'
			return fmt.Errorf("%w: JSON: %v", ErrInvalid, err)
		}
	} else if err := p.parseJSONArray(dec); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%w: JSON: data after the list", ErrInvalid)
	}
	return nil
}

// parseJSONArray reads the elements of an array whose '[' was read, and
// its ']'.
func (p *changedParser) parseJSONArray(dec *json.Decoder) error {
	for i := 0; dec.More(); i++ {
		where := fmt.Sprintf("extent %d", i)
		var e jsonExtent
		if err := dec.Decode(&e); err != nil {
			return fmt.Errorf("%w: JSON: %s: %v", ErrInvalid, where, err)
		}
		if e.Offset == nil || e.Length == nil {
			return fmt.Errorf("%w: JSON: %s: needs \"offset\" and \"length\"", ErrInvalid, where)
		}
		off, err := parseJSONNumber(*e.Offset)
		if err != nil {
			return fmt.Errorf("%w: JSON: %s: offset: %v", ErrInvalid, where, err)
		}
		length, err := parseJSONNumber(*e.Length)
		if err != nil {
			return fmt.Errorf("%w: JSON: %s: length: %v", ErrInvalid, where, err)
		}
		if e.Exists != nil {
			switch string(bytes.TrimSpace(*e.Exists)) {
			case `true`, `false`, `"true"`, `"false"`:
			default:
				return fmt.Errorf("%w: JSON: %s: \"exists\" is %s, not true or false", ErrInvalid, where, *e.Exists)
			}
		}
		if err := p.add(off, length, "JSON: "+where); err != nil {
			return err
		}
	}
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("%w: JSON: %v", ErrInvalid, err)
	}
	if tok != json.Delim(']') {
		return fmt.Errorf("%w: JSON: expected the end of the array", ErrInvalid)
	}
	return nil
}

func parseJSONNumber(n json.Number) (uint64, error) {
	v, err := strconv.ParseUint(string(n), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s is not an integer from 0 to 2^64-1", n)
	}
	return v, nil
}

// FromFlags returns the Source that voldelta send and push use for their
// flags: --base BASE makes reflink hints for --source relative to BASE
// (NewReflink), --changed FILE reads the changed extents from FILE
// (ChangedFile). Neither gives nil, nil: a full scan. Both is an error.
// The errors are the user's to fix (a missing file, a source that is not a
// regular file); conditions under which hints cannot be had this round
// (another filesystem, no shared extents) are reported by Changed, as
// ErrUnavailable.
func FromFlags(source, base, changedFile string) (Source, error) {
	switch {
	case base != "" && changedFile != "":
		return nil, errors.New("--base and --changed are two ways to say what changed: give one")
	case base != "":
		if source == "" {
			return nil, errors.New("--base needs --source, the reflinked copy to send")
		}
		r, err := NewReflink(base, source)
		if err != nil {
			return nil, err
		}
		return r, nil
	case changedFile != "":
		if _, err := os.Stat(changedFile); err != nil {
			return nil, fmt.Errorf("--changed: %w", err)
		}
		return ChangedFile{Path: changedFile}, nil
	}
	return nil, nil
}
