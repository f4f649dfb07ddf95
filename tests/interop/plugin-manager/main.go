// Command plugin-manager plays the kubelet's plugin manager (plugin watcher) against
// the host in `--registration watcher` mode, dialling exactly as the kubelet does:
//
//   - registration socket (pkg/kubelet/pluginmanager/operationexecutor, dial()):
//     grpc.DialContext(ctx, <bare socket path>, insecure, WithBlock,
//     WithContextDialer(unix)) and NO WithAuthority, so grpc-go puts the socket path
//     into :authority; GetInfo (1 s), later NotifyRegistrationStatus (5 s);
//   - device-plugin endpoint from GetInfo (pkg/kubelet/cm/devicemanager/plugin/v1beta1,
//     dial()): the same with WithAuthority("localhost"); GetDevicePluginOptions, then
//     ListAndWatch, kept open.
//
// grpc-go 1.33 (Debian bookworm) has no credentials/insecure package; grpc.WithInsecure()
// is what insecure.NewCredentials() replaced and behaves the same here.
//
// Every connection's first HEADERS frame is decoded from the bytes the client wrote, so
// the :authority grpc-go actually sent is printed, not assumed.
//
// -mode ci runs the whole sequence (see README.md) and exits non-zero on any failure;
// -mode confirm|refuse|silent does one registration and holds it until interrupted.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io/ioutil"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"

	pr "wdp/pluginmanager/pluginregistration"
	pb "wdp/pluginmanager/v1beta1"
)

var (
	registry = flag.String("registry", "", "the host's --plugins-registry-dir")
	readyz   = flag.String("readyz", "", "the host's /readyz URL (http://127.0.0.1:PORT/readyz)")
	mode     = flag.String("mode", "ci", "ci (the whole sequence), confirm, refuse or silent")
	wait     = flag.Duration("wait", 20*time.Second, "longest wait for anything the host should do")
)

var failures int

func check(ok bool, what string, detail ...interface{}) {
	if ok {
		fmt.Printf("ok    %s\n", what)
	} else {
		failures++
		fmt.Printf("FAIL  %s %v\n", what, detail)
	}
}

func fatal(format string, args ...interface{}) {
	fmt.Printf("FAIL  "+format+"\n", args...)
	os.Exit(1)
}

// recorder keeps what the client wrote on a connection, to decode its :authority.
type recorder struct {
	net.Conn
	mu      sync.Mutex
	written bytes.Buffer
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	if r.written.Len() < 64<<10 {
		r.written.Write(p)
	}
	r.mu.Unlock()
	return r.Conn.Write(p)
}

// authority decodes the :authority of the first request the client sent.
func (r *recorder) authority() string {
	r.mu.Lock()
	data := append([]byte(nil), r.written.Bytes()...)
	r.mu.Unlock()
	if !bytes.HasPrefix(data, []byte(http2.ClientPreface)) {
		return "<no HTTP/2 preface>"
	}
	framer := http2.NewFramer(ioutil.Discard, bytes.NewReader(data[len(http2.ClientPreface):]))
	framer.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	for {
		frame, err := framer.ReadFrame()
		if err != nil {
			return "<no request headers: " + err.Error() + ">"
		}
		if headers, ok := frame.(*http2.MetaHeadersFrame); ok {
			return headers.PseudoValue("authority")
		}
	}
}

// dial is the kubelet's: bare path target, insecure, blocking, unix context dialer;
// authority "" leaves :authority to grpc-go (the plugin manager), "localhost" is the
// device manager's WithAuthority.
func dial(socket, authority string) (*grpc.ClientConn, *recorder, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var conn *recorder
	opts := []grpc.DialOption{
		grpc.WithInsecure(),
		grpc.WithBlock(),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, "unix", addr)
			if err != nil {
				return nil, err
			}
			conn = &recorder{Conn: c}
			return conn, nil
		}),
	}
	if authority != "" {
		opts = append(opts, grpc.WithAuthority(authority))
	}
	cc, err := grpc.DialContext(ctx, socket, opts...)
	return cc, conn, err
}

// sockets lists the plug-in sockets in the registry, skipping hidden names as the
// kubelet's plugin watcher does.
func sockets() []string {
	entries, _ := ioutil.ReadDir(*registry)
	var out []string
	for _, e := range entries {
		if e.Mode()&os.ModeSocket != 0 && !strings.HasPrefix(e.Name(), ".") {
			out = append(out, filepath.Join(*registry, e.Name()))
		}
	}
	sort.Strings(out)
	return out
}

// oneSocket waits for exactly one plug-in socket other than `not`.
func oneSocket(not string) string {
	deadline := time.Now().Add(*wait)
	for {
		var found []string
		for _, s := range sockets() {
			if s != not {
				found = append(found, s)
			}
		}
		if len(found) == 1 {
			return found[0]
		}
		if time.Now().After(deadline) {
			fatal("one plug-in socket in %s (not %q): found %v", *registry, not, found)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func getReadyz() (int, string) {
	if *readyz == "" {
		return 0, ""
	}
	resp, err := http.Get(*readyz)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := ioutil.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(body))
}

// readyzBecomes polls /readyz until it answers `code` with a body containing `want`.
func readyzBecomes(code int, want string) (bool, string) {
	deadline := time.Now().Add(*wait)
	for {
		got, body := getReadyz()
		if got == code && strings.Contains(body, want) {
			return true, body
		}
		if time.Now().After(deadline) {
			return false, fmt.Sprintf("%d %s", got, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// registration is one socket as the kubelet holds it after GetInfo and the
// device-plugin calls.
type registration struct {
	socket string
	cc     *grpc.ClientConn
	client pr.RegistrationClient
	device *grpc.ClientConn
	stream pb.DevicePlugin_ListAndWatchClient
	cancel context.CancelFunc
}

// register does what the kubelet does before NotifyRegistrationStatus.
func register(socket string) *registration {
	cc, conn, err := dial(socket, "")
	if err != nil {
		fatal("dial %s as the plugin manager does: %v", socket, err)
	}
	client := pr.NewRegistrationClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	info, err := client.GetInfo(ctx, &pr.InfoRequest{})
	cancel()
	sent := conn.authority()
	fmt.Printf("note  plugin manager dial of %s sent :authority %q\n", socket, sent)
	check(err == nil, "GetInfo answered within the kubelet's 1 s, with the plugin manager's :authority", err)
	if err != nil {
		os.Exit(1)
	}
	check(sent == socket || sent == encodeAuthority(socket),
		"grpc-go put the socket path into :authority (raw or percent-encoded)", sent)
	check(info.Type == "DevicePlugin" && info.Name != "" && filepath.IsAbs(info.Endpoint) &&
		contains(info.SupportedVersions, "v1beta1"),
		"PluginInfo: DevicePlugin, a name, an absolute endpoint, v1beta1", info)

	// The device manager's client for the endpoint (WithAuthority("localhost")).
	device, dconn, err := dial(info.Endpoint, "localhost")
	if err != nil {
		fatal("dial the endpoint %s: %v", info.Endpoint, err)
	}
	plugin := pb.NewDevicePluginClient(device)
	_, err = plugin.GetDevicePluginOptions(context.Background(), &pb.Empty{})
	check(err == nil, "GetDevicePluginOptions on the endpoint", err)
	check(dconn.authority() == "localhost", "the device manager's dial sent :authority localhost", dconn.authority())
	streamCtx, streamCancel := context.WithCancel(context.Background())
	stream, err := plugin.ListAndWatch(streamCtx, &pb.Empty{})
	if err != nil {
		fatal("ListAndWatch: %v", err)
	}
	first, err := stream.Recv()
	check(err == nil && len(first.Devices) > 0, "ListAndWatch sends the device list", err)
	go func() {
		for {
			if _, err := stream.Recv(); err != nil {
				return
			}
		}
	}()
	return &registration{socket, cc, client, device, stream, streamCancel}
}

func (r *registration) notify(registered bool, errText string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := r.client.NotifyRegistrationStatus(ctx, &pr.RegistrationStatus{
		PluginRegistered: registered, Error: errText,
	})
	check(err == nil, fmt.Sprintf("NotifyRegistrationStatus(%v) answered", registered), err)
}

func (r *registration) close() {
	r.cancel()
	r.device.Close()
	r.cc.Close()
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// encodeAuthority is grpc-go's (clientconn.go, grpc-go#6428): what current grpc-go, and
// so the kubelet, sends as :authority for a bare-path target without WithAuthority.
func encodeAuthority(s string) string {
	const keep = "-_.~!$&'()*+,;=:[]@"
	var b strings.Builder
	for _, c := range []byte(s) {
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte(keep, c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// getInfoWithAuthority calls GetInfo with :authority forced to `authority`.
func getInfoWithAuthority(socket, authority string) error {
	cc, conn, err := dial(socket, authority)
	if err != nil {
		return err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err = pr.NewRegistrationClient(cc).GetInfo(ctx, &pr.InfoRequest{})
	if err == nil && conn.authority() != authority {
		return fmt.Errorf("sent :authority %q, not %q", conn.authority(), authority)
	}
	return err
}

func ci() {
	// 1. Before the kubelet did anything: served, but not ready.
	first := oneSocket("")
	ok, body := readyzBecomes(503, "GetInfo")
	check(ok, "/readyz 503 before the plugin watcher called GetInfo", body)

	// 2. A registration the kubelet refuses: still 503, with the kubelet's reason; the
	//    host serves a fresh socket for the watcher to try again.
	r := register(first)
	ok, body = readyzBecomes(503, "NotifyRegistrationStatus")
	check(ok, "/readyz 503 after GetInfo and ListAndWatch, before NotifyRegistrationStatus", body)
	r.notify(false, "plugin-manager interop: refused on purpose")
	r.close()
	second := oneSocket(first)
	_, gone := os.Stat(first)
	check(os.IsNotExist(gone), "the refused socket is removed", first)
	ok, body = readyzBecomes(503, "refused on purpose")
	check(ok, "/readyz 503 after the refusal, with the kubelet's error", body)

	// 3. A kubelet that stays silent after GetInfo: not ready.
	r = register(second)
	time.Sleep(2 * time.Second)
	code, body := getReadyz()
	check(code == 503 && strings.Contains(body, "NotifyRegistrationStatus"),
		"/readyz still 503 two seconds after GetInfo without NotifyRegistrationStatus", code, body)

	// 4. The kubelet confirms: ready.
	r.notify(true, "")
	ok, body = readyzBecomes(200, "ready")
	check(ok, "/readyz 200 once the kubelet confirmed and ListAndWatch is open", body)

	// 5. The other :authority forms on the registered socket: what current grpc-go (the
	//    kubelet's) sends, percent-encoded, and the raw path of older grpc-go.
	for _, authority := range []string{encodeAuthority(second), second, "localhost"} {
		err := getInfoWithAuthority(second, authority)
		check(err == nil, fmt.Sprintf("GetInfo with :authority %q", authority), err)
	}
	code, body = getReadyz()
	check(code == 200, "/readyz still 200 after those GetInfo calls (a second caller changes nothing)", code, body)
	r.close()
}

func main() {
	flag.Parse()
	if *registry == "" {
		fatal("-registry is required")
	}
	switch *mode {
	case "ci":
		ci()
	case "confirm", "refuse", "silent":
		r := register(oneSocket(""))
		switch *mode {
		case "confirm":
			r.notify(true, "")
		case "refuse":
			r.notify(false, "refused by plugin-manager -mode refuse")
		}
		code, body := getReadyz()
		fmt.Printf("note  /readyz %d %s\nnote  holding the registration; interrupt to end\n", code, body)
		interrupt := make(chan os.Signal, 1)
		signal.Notify(interrupt, os.Interrupt)
		<-interrupt
		r.close()
	default:
		fatal("unknown -mode %q", *mode)
	}
	if failures > 0 {
		fmt.Printf("%d failed\n", failures)
		os.Exit(1)
	}
	fmt.Println("all passed")
}
